import torch

from softhebb.data import load_dataset
from softhebb.network import build_model
from softhebb.shallow import label_assignment_accuracy, neuron_labels, post_hoc_loss

MLP = {"name": "tinyMLP", "classifier": {"dropout": 0.0}, "blocks": [
    {"type": "linear", "rule": "soft", "out": 100, "t_invert": 12, "lr": 0.045, "power_lr": 0.2, "radius": 35, "activation": "softmax_5"}]}


def test_neuron_labels_follow_wins_and_fall_back_to_summed_y():
    model = build_model(MLP, (1, 2, 2), 2, seed=0)
    layer = model.blocks[0].layer
    layer.weight.zero_()
    layer.weight[0, 0] = 1.0  # neuron 0 wins on images bright in pixel 0
    layer.weight[1, 3] = 1.0  # neuron 1 wins on images bright in pixel 3
    images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    images[:2, 0, 0, 0] = 255
    images[2:, 0, 1, 1] = 255
    labels = torch.tensor([1, 1, 0, 0])
    label_of = neuron_labels(model, images, labels, 2)
    assert label_of[0] == 1 and label_of[1] == 0
    acc = label_assignment_accuracy(model, images, labels, images, labels, 2)
    assert acc == {"train": 100.0, "test": 100.0}


def test_mlp_on_real_mnist_label_assignment_and_post_hoc_loss(data_root):
    train = load_dataset("mnist", "train", data_root)
    x, y = train.images[:20000], train.labels[:20000]
    model = build_model(MLP, (1, 28, 28), 10, seed=0)
    rows = post_hoc_loss(model, x, y, batch_size=32, probe_epochs=3, every=100, eval_size=2000)
    assert rows[0]["examples"] == 0 and rows[-1]["examples"] == 20000
    assert rows[-1]["cross_entropy"] < rows[0]["cross_entropy"] - 0.5  # label-free learning lowers a supervised loss
    acc = label_assignment_accuracy(model, x, y, x[:1000], y[:1000], 10)
    assert acc["train"] > 75 and acc["test"] > 75, acc  # 100 neurons after 20,000 images (measured 87 %); chance is 10 %
