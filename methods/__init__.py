"""Methods (installed as ``bench.methods``). Importing this package registers the built-in methods."""

import bench.methods.consistency  # noqa: F401  (registers)
import bench.methods.ect  # noqa: F401  (registers)
import bench.methods.imeanflow  # noqa: F401  (registers)
import bench.methods.meanflow  # noqa: F401  (registers)
import bench.methods.reflow  # noqa: F401  (registers)
import bench.methods.scm  # noqa: F401  (registers)
import bench.methods.shortcut  # noqa: F401  (registers)
import bench.methods.tvm  # noqa: F401  (registers)
from bench.methods import chargen, flow, gan  # noqa: F401  (registers)
