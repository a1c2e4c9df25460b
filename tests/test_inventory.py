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


def test_reasons_for_every_kind_of_conv():
    model = Zoo()
    prunable = PrunableModel(model, [1, 3, 16, 16])
    rows = {r.weight: r for r in inventory(prunable, [paddle.zeros([1, 3, 16, 16])])}
    text = table_text(rows.values())
    assert rows["stem.weight"].status == "prunable", text
    assert rows["dw.weight"].status == "follows" and rows["dw.weight"].reason.startswith("depthwise"), text
    # grouped convs keep their groups: one class is the same position in each of the 4 groups
    assert rows["grouped.weight"].status == "prunable" and prunable.groups["grouped.weight"].channels == 4, text
    assert prunable.groups["plain.weight"].channels == 4, text  # plain feeds the grouped conv
    # a conv called twice in a loop couples its own input and output channels
    assert rows["looped.weight"].status == "follows" and rows["looped.weight"].group == "grouped.weight", text
    # run only at the larger input size: traced there, so its couplings are known (left and right
    # read its output at 32 px and the looped output at 16 px: all one channel set)
    assert rows["big_only.weight"].status == "follows" and "conditional" in rows["big_only.weight"].reason, text
    assert rows["left.weight"].status == "prunable" and rows["right.weight"].status == "prunable", text
    assert rows["up.weight"].status == "prunable", text  # a conv-transpose produces a group too
    assert rows["out.weight"].status == "skipped" and rows["out.weight"].reason == "model output", text
    assert "10 convs: 6 prunable groups" in summary(rows.values()), summary(rows.values())
    ratios = {g: 0.5 for g in prunable.groups}
    applied = prunable.apply(ratios)
    for size in (16, 32):  # every traced pass still runs, the conditional conv included
        model.eval()
        model(paddle.zeros([1, 3, size, size]))
    assert list(model.grouped.weight.shape) == [8, 2, 3, 3] and model.grouped._groups == 4
    assert list(model.looped.weight.shape) == [8, 8, 3, 3]
    assert list(model.out.weight.shape) == [4, 8, 1, 1]  # concat of the two halves, each halved
    applied.restore()
    assert list(model.grouped.weight.shape) == [16, 4, 3, 3]


def test_tracer_and_inventory_share_one_eager_forward_per_pass():
    """``show``'s time goes to eager forwards: the tracer's passes (eval, train, twice the size)
    also give the inventory its conv calls and FLOPs, the same FLOPs a separate measurement gives.
    Other inputs than the tracer's (ones, not zeros) get passes of their own."""
    from slim_plugins.plugins.prune import measure

    model = Zoo()
    eager = []
    model.register_forward_pre_hook(lambda layer, _inputs: eager.append(layer.training) if paddle.in_dynamic_mode()
                                    else None)
    prunable = PrunableModel(model, [1, 3, 16, 16])
    rows = inventory(prunable, [paddle.zeros([1, 3, 16, 16])])
    assert sorted(eager) == [False, False, True], eager
    flops = measure.flops_by_layer(model, [paddle.zeros([1, 3, 16, 16])])
    assert {r.weight: r.flops_share for r in rows} == {
        r.weight: flops.get(r.weight[:-len(".weight")], 0) / sum(flops.values()) for r in rows}
    assert rows[0].flops_share > 0
    del eager[:]
    again = inventory(prunable, [paddle.ones([1, 3, 16, 16])])
    assert sorted(eager) == [False, True], eager  # the larger pass's zeros are the tracer's
    assert again == rows
