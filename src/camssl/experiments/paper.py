"""The paper's own numbers (Lee & Cho 2021, Tables I and II), shown beside ours in the tables."""

from __future__ import annotations

PAPER = "Lee & Cho 2021 (arXiv 2108.13673)"
# Table I, validation accuracy % (mean, std): ratio -> layer -> cell
PAPER_TABLE1: dict[float, dict[str, tuple[float, float]]] = {
    0.5: {"layer1": (88.87, 0.88), "layer2": (89.46, 1.58), "layer3": (89.89, 0.41), "layer4": (89.63, 0.15)},
    1.0: {"layer1": (89.33, 1.47), "layer2": (89.59, 1.24), "layer3": (90.41, 0.12), "layer4": (90.10, 0.03)},
    2.0: {"layer1": (90.48, 0.88), "layer2": (89.98, 0.88), "layer3": (90.99, 0.88), "layer4": (90.43, 0.88)},
}
PAPER_BASELINE = (89.61, 0.84)  # supervised only; the paper lists it once (it does not depend on the ratio)
PAPER_ABLATION = {0.5: (89.19, 1.16), 1.0: (89.64, 1.57), 2.0: (90.56, 1.44)}  # Table II, L_S + L_P
PAPER_PROTOCOL = (
    "ResNet-50 fine-tuned from ImageNet weights on CIFAR-10 upsampled to 256 px, batches of 4 + 4, "
    "the best validation accuracy seen during training, unseeded splits, number of runs not stated"
)
