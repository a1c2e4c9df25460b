"""Every conv is listed with its group or the reason it is skipped."""
import paddle
import paddle.nn as nn

from slim_plugins.plugins.prune.inventory import inventory, summary, table_text
from slim_plugins.plugins.prune.model import PrunableModel


class Zoo(nn.Layer):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2D(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2D(16)
        self.plain = nn.Conv2D(16, 16, 3, padding=1)
        self.dw = nn.Conv2D(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2D(16, 16, 3, padding=1, groups=4)
        self.looped = nn.Conv2D(16, 16, 3, padding=1)
        self.big_only = nn.Conv2D(16, 16, 3, padding=1)
        self.left = nn.Conv2D(16, 8, 1)
        self.right = nn.Conv2D(16, 8, 1)
        self.up = nn.Conv2DTranspose(16, 16, 2, stride=2)
        self.out = nn.Conv2D(16, 4, 1)

    def forward(self, x):
        x = nn.functional.relu(self.bn(self.stem(x)))
        x = nn.functional.relu(self.plain(x))
        x = self.grouped(self.dw(x))
        for _ in range(2):
            x = nn.functional.relu(self.looped(x))
        if x.shape[-1] > 16:  # only at the larger input size
            x = self.big_only(x)
        x = paddle.concat([self.left(x), self.right(x)], axis=1)
        return self.out(self.up(x))


def test_reasons_for_every_kind_of_unsafe_conv():
    model = Zoo()
    prunable = PrunableModel(model, [1, 3, 16, 16])
    rows = {r.weight: r for r in inventory(prunable, [paddle.zeros([1, 3, 16, 16])])}
    text = table_text(rows.values())
    assert rows["stem.weight"].status == "prunable", text
    assert rows["dw.weight"].reason.startswith("depthwise"), text
    assert rows["grouped.weight"].reason.startswith("grouped conv (groups=4)"), text
    assert "called 2 times" in rows["looped.weight"].reason, text
    assert rows["big_only.weight"].reason.startswith("conditional"), text
    assert "concat" in rows["left.weight"].reason and "concat" in rows["right.weight"].reason, text
    assert rows["up.weight"].reason == "transposed conv", text
    assert rows["out.weight"].status == "skipped" and rows["out.weight"].reason, text
    assert "looped.weight" not in prunable.selected_groups()
    assert "big_only.weight" not in prunable.selected_groups()
    assert "10 convs: 2 prunable groups" in summary(rows.values())
