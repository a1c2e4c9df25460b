"""FLOPs at a fixed workload (measure.Workload): layers whose row count the data decides are
counted at fixed rows; every other layer as it ran."""
import paddle
import paddle.nn as nn

from slim_plugins.plugins.prune import measure


class Proposals(nn.Layer):
    """A conv over the image, then a head over the positions whose first channel is positive:
    how many rows the head runs on depends on the weights, as a two-stage detector's RoI head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2D(3, 8, 3, padding=1)
        self.head = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))

    def forward(self, x):
        f = self.conv(x)
        rows = f.transpose([0, 2, 3, 1]).reshape([-1, 8])
        keep = paddle.nonzero(rows[:, 0] > 0).flatten()
        return self.head(paddle.gather(rows, keep))


def kept_rows(model, inputs):
    seen = []
    handle = model.head[0].register_forward_post_hook(lambda _l, i, _o: seen.append(int(i[0].shape[0])))
    measure.forward_once(model, inputs, [handle], mode="eval")
    return seen[0]


def test_rows_the_weights_decide_are_held_and_the_rest_counted_as_it_ran():
    paddle.seed(0)
    model = Proposals()
    inputs = [paddle.rand([2, 3, 8, 8]) - 0.5]
    conv = 2 * 8 * 8 * 8 * (3 * 9 + 1)
    per_row = 16 * 8 + 4 * 16
    rows = kept_rows(model, inputs)
    assert 0 < rows < 2 * 8 * 8
    assert measure.flops(model, inputs) == conv + rows * per_row

    reference = measure.Workload()
    assert measure.flops(model, inputs, reference) == conv + rows * per_row  # the reference: as it ran
    assert reference.describe() is None  # nothing held yet
    model.conv.bias.set_value(paddle.full([8], 10.0))  # every position kept now
    assert kept_rows(model, inputs) == 2 * 8 * 8
    assert measure.flops(model, inputs) == conv + 2 * 8 * 8 * per_row  # the count as it was: the rows that ran
    assert measure.flops(model, inputs, reference) == conv + rows * per_row  # held at the reference's rows
    held = reference.describe()
    assert held["rows"] == {"head.0": rows, "head.1": rows}
    assert held["measured"]["head.0"] == [rows, 2 * 8 * 8]

    declared = measure.Workload({"head": 5})  # rows per image, as an adapter declares them
    assert measure.flops(model, inputs, declared) == conv + 2 * 5 * per_row
    assert declared.describe()["rows"] == {"head.0": 10, "head.1": 10}


def test_models_whose_rows_are_the_batch_count_the_same_with_a_workload():
    from paddle.vision.models import mobilenet_v2

    paddle.seed(0)
    net = mobilenet_v2(scale=0.25, num_classes=10)
    for batch in (1, 3):
        inputs = [paddle.rand([batch, 3, 32, 32])]
        workload = measure.Workload()
        plain = measure.flops_by_layer(net, inputs)
        assert measure.flops_by_layer(net, inputs, workload) == plain
        assert measure.flops_by_layer(net, inputs, workload) == plain  # a later measurement too
        assert workload.describe() is None
