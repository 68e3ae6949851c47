"""A table of bad inputs to ``mrpo-train`` (:data:`CASES`), each with the message it must end in.

Used by the command-line test (``tests/test_bad_input_cli.py``: exit status 2, no traceback,
the key or file named, no model loaded) and by ``benchmarks/bad_inputs.py``, which prints the
table with the seconds each input takes to be refused. :mod:`~.case`: one bad input and how it
runs; :mod:`~.fixtures`: the files the cases name; :mod:`~.files`, :mod:`~.settings` and
:mod:`~.losses`: the cases by group.
"""

from __future__ import annotations

from support.bad_inputs import files, settings
from support.bad_inputs.case import BadInput
from support.bad_inputs.losses import LOSS_CASES


def _no_gpu() -> bool:
    import torch

    return not torch.cuda.is_available()


CASES: tuple[BadInput, ...] = (
    *files.DATA,
    *settings.VALUES,
    *settings.REFERENCES,
    *files.MODELS,
    *settings.OPTIMIZATION,
    *settings.CALLBACKS,
    *files.FOLDERS,
    *files.CHECKPOINTS,
    *(settings.NO_GPU if _no_gpu() else ()),  # on a GPU machine these inputs are good ones
    *(BadInput(*case) for case in LOSS_CASES),
)
