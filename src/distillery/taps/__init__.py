"""Taps: where signals come from.

* :mod:`.hooks`: capture intermediate signals of any ``nn.Module`` by dotted module path
  (forward hooks, no edit of the user's model).
* :mod:`.adapters`: small trainable maps from a student signal to the teacher signal's shape
  (FitNets' regressor, built from the first batch's shapes).
* :mod:`.training_only`: modules that exist only to be distilled into and are removed when the
  student is exported.
"""

from .hooks import (
    INPUT_SUFFIX,
    Address,
    StopForward,
    capture,
    format_address,
    module_paths,
    output_signals,
    parse_address,
    resolve,
    run_tapped,
    split_address,
    validate,
)

__all__ = [
    "INPUT_SUFFIX",
    "Address",
    "StopForward",
    "capture",
    "format_address",
    "module_paths",
    "output_signals",
    "parse_address",
    "resolve",
    "run_tapped",
    "split_address",
    "validate",
]
