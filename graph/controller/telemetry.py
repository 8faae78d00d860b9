"""GPU telemetry (VRAM used/total and utilisation per device) and the VRAM headroom check that the
session controller asks before admitting a voice session.

Why: the plans require the RX 6800 to stay under 14 GB during a session (RVC and the text LLM share
it), and placement must be visible. NVIDIA cards are read through nvidia-ml-py (pynvml), AMD cards
through amdsmi (the ROCm package, the `amd` extra). Either library, its driver or the card may be
missing: that vendor is then reported as "absent", never as an error, so a CPU-only machine (CI, a
developer laptop) runs the same code. No Ray here: `deployments/telemetry.py` exports these values
as Ray metrics.

Devices are matched to the cluster's custom resources (`gtx1660`, `rx6800`) by vendor and a
substring of the product name, so the headroom rule can say "rx6800" instead of "device 1".
"""
from __future__ import annotations

import enum
import importlib
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

from graph.controller.headroom import HeadroomVerdict

MB = 1024 * 1024
GB = 1024 * MB


class ProbeState(enum.Enum):
    OK = "ok"
    ABSENT = "absent"  # library, driver or device missing: expected on machines without that GPU
    ERROR = "error"  # the library is there but failed while reading: worth a look


@dataclass(frozen=True)
class DeviceStats:
    vendor: str  # "nvidia" or "amd"
    index: int
    name: str
    vram_used_bytes: int
    vram_total_bytes: int
    utilization_pct: float | None
    resource: str | None = None  # the cluster resource this card stands for, when known

    @property
    def vram_used_gb(self) -> float:
        return self.vram_used_bytes / GB

    @property
    def vram_total_gb(self) -> float:
        return self.vram_total_bytes / GB


@dataclass(frozen=True)
class VendorStatus:
    vendor: str
    state: ProbeState
    detail: str = ""


@dataclass(frozen=True)
class TelemetrySnapshot:
    devices: tuple[DeviceStats, ...]
    vendors: tuple[VendorStatus, ...]
    taken_at: float

    def device_for(self, resource: str) -> DeviceStats | None:
        return next((d for d in self.devices if d.resource == resource), None)

    def vendor(self, name: str) -> VendorStatus | None:
        return next((v for v in self.vendors if v.vendor == name), None)

    def as_dict(self) -> dict[str, Any]:
        """For /healthz: vendors by name ("ok"/"absent"/"error" + detail) and each device."""
        return {
            "taken_at": self.taken_at,
            "vendors": {v.vendor: {"state": v.state.value, "detail": v.detail} for v in self.vendors},
            "devices": [
                {**asdict(d), "vram_used_gb": round(d.vram_used_gb, 3), "vram_total_gb": round(d.vram_total_gb, 3)}
                for d in self.devices
            ],
        }


@dataclass(frozen=True)
class ResourceMatch:
    """Which physical card a cluster resource name stands for."""

    vendor: str
    name_contains: str


DEFAULT_RESOURCES: dict[str, ResourceMatch] = {
    "gtx1660": ResourceMatch("nvidia", "1660"),
    "rx6800": ResourceMatch("amd", "6800"),
}

ModuleLoader = Callable[[str], ModuleType]


class NvidiaProbe:
    """NVIDIA cards through nvidia-ml-py. Absent when the library or the driver is missing."""

    vendor = "nvidia"

    def __init__(self, load: ModuleLoader = importlib.import_module):
        self._load = load
        self._nvml: Any = None

    def read(self) -> tuple[VendorStatus, list[DeviceStats]]:
        try:
            nvml = self._nvml or self._load("pynvml")
        except ImportError:
            return VendorStatus(self.vendor, ProbeState.ABSENT, "nvidia-ml-py is not installed"), []
        if self._nvml is None:
            try:
                nvml.nvmlInit()
            except nvml.NVMLError as exc:  # no libnvidia-ml / no driver / no device
                return VendorStatus(self.vendor, ProbeState.ABSENT, f"NVML unavailable: {exc}"), []
            self._nvml = nvml
        try:
            devices = []
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                name = nvml.nvmlDeviceGetName(handle)
                try:
                    utilization = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                except nvml.NVMLError:
                    utilization = None
                devices.append(
                    DeviceStats(self.vendor, index, name.decode() if isinstance(name, bytes) else str(name), int(memory.used), int(memory.total), utilization)
                )
        except nvml.NVMLError as exc:
            return VendorStatus(self.vendor, ProbeState.ERROR, f"NVML read failed: {exc}"), []
        if not devices:
            return VendorStatus(self.vendor, ProbeState.ABSENT, "no NVIDIA device"), []
        return VendorStatus(self.vendor, ProbeState.OK, f"{len(devices)} device(s)"), devices


class AmdProbe:
    """AMD cards through amdsmi (ROCm). Absent when the package or the driver is missing."""

    vendor = "amd"

    def __init__(self, load: ModuleLoader = importlib.import_module):
        self._load = load
        self._smi: Any = None

    def read(self) -> tuple[VendorStatus, list[DeviceStats]]:
        try:
            smi = self._smi or self._load("amdsmi")
        except (ImportError, OSError) as exc:  # amdsmi raises OSError-like errors when libamd_smi is missing
            return VendorStatus(self.vendor, ProbeState.ABSENT, f"amdsmi unavailable: {exc}"), []
        failure = getattr(smi, "AmdSmiException", Exception)
        if self._smi is None:
            try:
                smi.amdsmi_init()
            except failure as exc:
                return VendorStatus(self.vendor, ProbeState.ABSENT, f"amdsmi cannot start: {exc}"), []
            self._smi = smi
        try:
            devices = []
            for index, handle in enumerate(smi.amdsmi_get_processor_handles()):
                vram = smi.amdsmi_get_gpu_vram_usage(handle)  # MB
                try:
                    name = smi.amdsmi_get_gpu_asic_info(handle).get("market_name", f"AMD GPU {index}")
                except failure:
                    name = f"AMD GPU {index}"
                try:
                    utilization = float(smi.amdsmi_get_gpu_activity(handle)["gfx_activity"])
                except (failure, KeyError, TypeError, ValueError):
                    utilization = None
                devices.append(
                    DeviceStats(self.vendor, index, str(name), int(vram["vram_used"]) * MB, int(vram["vram_total"]) * MB, utilization)
                )
        except failure as exc:
            return VendorStatus(self.vendor, ProbeState.ERROR, f"amdsmi read failed: {exc}"), []
        if not devices:
            return VendorStatus(self.vendor, ProbeState.ABSENT, "no AMD device"), []
        return VendorStatus(self.vendor, ProbeState.OK, f"{len(devices)} device(s)"), devices


class GpuTelemetry:
    """Reads every vendor probe and labels devices with their cluster resource. Call `snapshot()`."""

    def __init__(
        self,
        probes: tuple = (),
        resources: Mapping[str, ResourceMatch] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.probes = probes or (NvidiaProbe(), AmdProbe())
        self.resources = dict(DEFAULT_RESOURCES if resources is None else resources)
        self.clock = clock

    def snapshot(self) -> TelemetrySnapshot:
        vendors, devices = [], []
        for probe in self.probes:
            try:
                status, found = probe.read()
            except Exception as exc:  # noqa: BLE001 - telemetry must never take a replica down
                status, found = VendorStatus(getattr(probe, "vendor", "?"), ProbeState.ERROR, f"{type(exc).__name__}: {exc}"), []
            vendors.append(status)
            devices.extend(found)
        return TelemetrySnapshot(tuple(self._label(devices)), tuple(vendors), self.clock())

    def _label(self, devices: list[DeviceStats]) -> list[DeviceStats]:
        labelled = []
        taken: set[str] = set()
        for device in devices:
            resource = next(
                (
                    name
                    for name, match in self.resources.items()
                    if name not in taken and match.vendor == device.vendor and match.name_contains.lower() in device.name.lower()
                ),
                None,
            )
            if resource:
                taken.add(resource)
            labelled.append(DeviceStats(**{**asdict(device), "resource": resource}))
        return labelled


@dataclass(frozen=True)
class VramVerdict(HeadroomVerdict):
    """The controller's HeadroomVerdict (`admit`, `reason`, `free_mb`, `needed_mb`) plus the devices
    it was based on."""

    devices: tuple[DeviceStats, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.admit


class WhenUnseen(enum.Enum):
    """What to do when a limited card is not visible (telemetry absent)."""

    ADMIT = "admit"  # CPU-only dev/CI machines: nothing to protect
    REFUSE = "refuse"  # the production box: unseen VRAM is not safe VRAM


@dataclass(frozen=True)
class VramExcess:
    """A card using more VRAM than its limit allows while sessions run."""

    resource: str
    used_mb: float
    limit_mb: float

    @property
    def message(self) -> str:
        return (
            f"{self.resource} uses {self.used_mb / 1024:.1f} GB of VRAM, over its {self.limit_mb / 1024:g} GB limit "
            "for voice sessions"
        )


@dataclass
class VramHeadroom:
    """Plain callable for `graph.controller.state_machine` (`headroom=`): may a voice session start?

    Asked before every session start, the first one too. `excess()` is what the controller actor polls
    while sessions run, to warn when a card crosses its limit.

    `limits_gb`: per cluster resource, the most VRAM it may use while sessions run (the plans: the
    RX 6800 under 14 GB). `session_mb`: what one more session is expected to add on that card (KV
    cache, buffers); the session is admitted when used + session_mb stays under the limit.
    """

    limits_gb: Mapping[str, float] = field(default_factory=lambda: {"rx6800": 14.0})
    session_mb: Mapping[str, float] = field(default_factory=dict)
    when_unseen: WhenUnseen = WhenUnseen.ADMIT
    telemetry: Callable[[], TelemetrySnapshot] = field(default_factory=lambda: GpuTelemetry().snapshot)

    def __post_init__(self) -> None:
        self.when_unseen = WhenUnseen(self.when_unseen)
        for resource, limit in self.limits_gb.items():
            if limit <= 0:
                raise ValueError(f"VRAM limit for {resource} must be positive, got {limit}")

    def __call__(self) -> VramVerdict:
        snapshot = self.telemetry()
        reasons: list[str] = []
        admit = True
        tightest_free: float | None = None
        tightest_need: float | None = None
        for resource, limit_gb in self.limits_gb.items():
            device = snapshot.device_for(resource)
            need_mb = float(self.session_mb.get(resource, 0.0))
            if device is None:
                seen = ", ".join(f"{v.vendor} {v.state.value}" for v in snapshot.vendors) or "no probes"
                if self.when_unseen is WhenUnseen.REFUSE:
                    admit = False
                    reasons.append(f"{resource} VRAM cannot be read ({seen})")
                else:
                    reasons.append(f"{resource} not visible ({seen}), not checked")
                continue
            limit_mb = limit_gb * 1024
            used_mb = device.vram_used_bytes / MB
            free_mb = limit_mb - used_mb
            if tightest_free is None or free_mb - need_mb < tightest_free - (tightest_need or 0.0):
                tightest_free, tightest_need = free_mb, need_mb
            if used_mb + need_mb > limit_mb:
                admit = False
                reasons.append(
                    f"{resource} uses {used_mb / 1024:.1f} GB of {device.vram_total_gb:.1f} GB; a voice session needs it "
                    f"under {limit_gb:g} GB" + (f" with {need_mb:.0f} MB to spare" if need_mb else "")
                )
            else:
                reasons.append(f"{resource} {used_mb / 1024:.1f}/{limit_gb:g} GB")
        return VramVerdict(admit, "; ".join(reasons), tightest_free, tightest_need, snapshot.devices)

    def excess(self) -> tuple[VramExcess, ...]:
        """The limited cards that are over their limit now. A card that cannot be read is not reported: with
        no reading there is nothing to warn about (the start check decides what unseen means)."""
        snapshot = self.telemetry()
        over = []
        for resource, limit_gb in self.limits_gb.items():
            device = snapshot.device_for(resource)
            if device is None:
                continue
            used_mb, limit_mb = device.vram_used_bytes / MB, limit_gb * 1024
            if used_mb > limit_mb:
                over.append(VramExcess(resource, used_mb, limit_mb))
        return tuple(over)
