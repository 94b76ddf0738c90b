"""widthwise: width-consistency studies of neural networks.

Public API::

    spec = widthwise.load_spec("quickstart")      # or a YAML path
    out = widthwise.run(spec)                      # trains every width, all seeds at once
    ds = widthwise.open_study(out)                 # xarray.Dataset (width, seed, step, ...)
"""

__version__ = "0.1.0"

from widthwise.coord_check import coord_check
from widthwise.errors import SpecError, StoreError, UserError
from widthwise.executors import EXECUTORS
from widthwise.families import FAMILIES
from widthwise.parameterization import PARAMETERIZATIONS
from widthwise.probes import PROBES
from widthwise.spec import StudySpec, load_spec
from widthwise.store import open_study
from widthwise.streams import STREAMS
from widthwise.study import run

__all__ = [
    "EXECUTORS",
    "FAMILIES",
    "PARAMETERIZATIONS",
    "PROBES",
    "STREAMS",
    "SpecError",
    "StoreError",
    "StudySpec",
    "UserError",
    "__version__",
    "coord_check",
    "load_spec",
    "open_study",
    "run",
]
