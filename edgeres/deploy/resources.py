"""Where the top-level data folders (`devices/`, `export/`) are: the source tree when edgeres runs from a checkout
or an editable install, the copy packaged as `edgeres/_data/` in a wheel otherwise."""
from __future__ import annotations

from pathlib import Path

from edgeres.errors import UserInputError

_CHECKOUT = Path(__file__).resolve().parents[2]
_PACKAGED = Path(__file__).resolve().parents[1] / "_data"


def data_dir(name: str) -> Path:
    """The folder `name` ("devices" or "export") of this installation."""
    for root in (_PACKAGED, _CHECKOUT):
        if (root / name).is_dir():
            return root / name
    raise UserInputError(f"edgeres is installed without its {name}/ folder (looked in {_PACKAGED} and {_CHECKOUT}); "
                         "reinstall it with `pip install .` from a full checkout")
