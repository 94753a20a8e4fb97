"""Configs as code: command-line overrides with type checks and clear errors."""

import pytest

from experiments import vae_mnist
from genjax import cli
from genjax.config import parse_overrides
from genjax.errors import GenjaxError


def test_overrides_apply_with_types():
    config = vae_mnist.get_config()
    rest = parse_overrides(config, ["--config.num_epochs=3", "--config.optimizer.learning_rate", "1e-2",
                                    "--config.model.kind=conv", "--config.data.augment=True", "--workdir", "w"])
    assert rest == ["--workdir", "w"]
    assert config.num_epochs == 3 and config.optimizer.learning_rate == 0.01
    assert config.model.kind == "conv" and config.data.augment is True
    parse_overrides(config, ["--config.optimizer.learning_rate=1"])  # an int where a float is expected is fine
    assert isinstance(config.optimizer.learning_rate, float)


@pytest.mark.parametrize(
    "arg, message",
    [
        ("--config.num_epoch=3", "unknown config key 'num_epoch'; known keys: .*num_epochs"),
        ("--config.optimizer.lr=3", "unknown config key 'optimizer.lr'"),
        ("--config.nothing.here=1", "unknown config key 'nothing'"),
        ("--config.num_epochs=abc", "config key 'num_epochs' expects int .*got 'abc'"),
        ("--config.num_epochs=2.5", "config key 'num_epochs' expects int"),
        ("--config.data.augment=3", "config key 'data.augment' expects bool"),
    ],
)
def test_bad_overrides_name_the_key(arg, message):
    with pytest.raises(GenjaxError, match=message):
        parse_overrides(vae_mnist.get_config(), [arg])


def test_entry_point_prints_one_error_line_and_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(cli.experiment_main(vae_mnist.get_config, vae_mnist.train_and_evaluate, vae_mnist.__doc__), ["--workdir", "unused", "--config.optimizer.lr=3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown config key 'optimizer.lr'")
