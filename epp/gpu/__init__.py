"""The GPU layer as Prometheus shows it: utilization, memory and health per pod.

`poller.GpuPoller` runs the instant queries (DCGM or the nvidia exporter) and hands each pod's
`GpuMetrics` to the datastore; `health` turns DCGM's throttle reasons, temperature, XID errors
and violation time into a health class with hysteresis. What Kubernetes says of the hardware
(DRA devices, taints) is read by `epp.api.devices`; the values both produce are `epp.hardware`'s.
"""

from epp.gpu.health import DcgmHealth, HealthSettings
from epp.gpu.poller import GpuPoller, GpuSettings, GpuSink

__all__ = ["DcgmHealth", "GpuPoller", "GpuSettings", "GpuSink", "HealthSettings"]
