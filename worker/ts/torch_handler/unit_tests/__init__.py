"""``ts.torch_handler.unit_tests``: what TorchServe's handler tests import (see test_utils)."""
