"""GPU code, all of it: the inventory found through NVML (``inventory``), a model's devices
(``devices``: deviceType, deviceIds) and the placement of workers on GPUs (``placement``).

It sits above ``daemon/models`` (placement reads a version's device settings) and below
``daemon/workers`` (the Supervisor asks placement where a new worker goes); it reads the
Supervisor's worker table through the ``PlacedWorker`` protocol, never importing workers/.
"""
