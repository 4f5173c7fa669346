"""MLPerf's LR schedule: linear warm-up, then polynomial decay to a floor."""

from dlrm_dist.config import ScheduleConfig
from dlrm_dist.training.optim import lr_factor


def test_warmup_then_quadratic_decay():
    f = lr_factor(ScheduleConfig(warmup_steps=10, decay_start_step=20, decay_steps=10, decay_power=2.0))
    assert f(0) == 0.1 and f(9) == 1.0
    assert f(15) == 1.0
    assert abs(f(25) - 0.25) < 1e-12  # ((30 - 25) / 10) ** 2
    assert f(30) == 0.0 and f(1000) == 0.0


def test_constant_without_schedule():
    f = lr_factor(ScheduleConfig())
    assert f(0) == f(10_000) == 1.0
