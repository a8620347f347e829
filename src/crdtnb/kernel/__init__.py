"""Kernels: each room's code runs in one Jupyter kernel on the server, whose outputs are
written into the room's document (docs/outputs.md).

- ``process.py``: the kernel process and its channels;
- ``iopub.py``: its iopub messages routed to cells and written in batches;
- ``agent.py``: the execution queue and the lifecycle of each run;
- ``extension.py``: one agent per room, the REST routes, idle culling.
"""

from .agent import CUT_OFF, KernelAgent, KernelStatus
from .extension import Kernels
from .process import KernelDied, KernelLauncher, KernelProcess

__all__ = ["CUT_OFF", "KernelAgent", "KernelDied", "KernelLauncher", "KernelProcess", "KernelStatus", "Kernels"]
