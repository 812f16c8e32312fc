"""Keep inactive cluster banks off the accelerator (``LoliClustered(..., offload="cpu")``).

K banks cost K x the inner optimizer's state memory; only the bank of the step being taken has to be
on the parameters' device. ``BankOffloader`` parks every other bank in (pinned) CPU memory and,
because the schedule knows the next cluster, starts copying that bank back on a side CUDA stream as
soon as a step ends, so the copy overlaps the next forward and backward. The bank just used is
written back the same way. At most two banks are device-resident: the active one and the one
being prefetched.

Tensors are moved by replacing them in the bank's per-parameter dicts, the way the inner optimizer
finds them (``state[param][key]``); each remembers its home device. Entries named in ``keep`` (the
inner's state shared by all clusters, which every bank refers to) are never moved: every step needs
them. On a CPU-only machine the same mechanics run with copies on both sides (a parked tensor is a
new CPU tensor), which is what the tests exercise bit for bit.
"""

from __future__ import annotations

import torch


class BankOffloader:
    def __init__(self, clusters: int, target: str | torch.device = "cpu", keep: frozenset[str] = frozenset()):
        self.target = torch.device(target)
        if self.target.type != "cpu":
            raise ValueError(f"offload={target!r}: only 'cpu' (or None) is supported")
        self.clusters = clusters
        self.keep = frozenset(keep)
        self.resident: set[int] = set(range(clusters))  # banks whose tensors are at home
        self._homes: dict[int, dict[tuple[int, str], torch.device]] = {k: {} for k in range(clusters)}
        self._events: dict[int, object] = {}
        self._stream = None

    # ----------------------------------------------------------------- helpers
    def _side_stream(self, device: torch.device):
        if device.type != "cuda":
            return None
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=device)
        return self._stream

    def _tensors(self, bank):
        for param, state in bank.items():
            for key, value in list(state.items()):
                if isinstance(value, torch.Tensor) and value.numel() > 0 and key not in self.keep:
                    yield param, state, key, value

    # ----------------------------------------------------------------- moves
    def park(self, k: int, bank) -> None:
        """Move bank k's tensors to (pinned) CPU memory without blocking the compute stream."""
        if k not in self.resident:
            return
        homes = self._homes[k]
        for param, state, key, value in self._tensors(bank):
            homes[(id(param), key)] = value.device
            stream = self._side_stream(value.device)
            if stream is None:
                state[key] = value.to(self.target, copy=True)
                continue
            stream.wait_stream(torch.cuda.current_stream(value.device))
            with torch.cuda.stream(stream):
                parked = torch.empty(value.shape, dtype=value.dtype, device="cpu", pin_memory=True)
                parked.copy_(value, non_blocking=True)
                value.record_stream(stream)  # its memory is reused only after the copy is done
            state[key] = parked
        self.resident.discard(k)
        self._events.pop(k, None)

    def fetch(self, k: int, bank, wait: bool) -> None:
        """Bring bank k home; ``wait=False`` starts the copies on the side stream (prefetch)."""
        if k in self.resident:
            if wait:
                self.wait(k)
            return
        homes = self._homes[k]
        stream = None
        for param, state, key, value in self._tensors(bank):
            home = homes.get((id(param), key), param.device)
            stream = self._side_stream(home)
            if stream is None:
                state[key] = value.to(home, copy=True)
                continue
            with torch.cuda.stream(stream):
                fetched = value.to(home, non_blocking=True)
                fetched.record_stream(torch.cuda.current_stream(home))
            state[key] = fetched
        if stream is not None:
            event = torch.cuda.Event()
            event.record(stream)
            self._events[k] = event
        self.resident.add(k)
        if wait:
            self.wait(k)

    def wait(self, k: int) -> None:
        event = self._events.pop(k, None)
        if event is not None:
            torch.cuda.current_stream().wait_event(event)

    def synchronize(self) -> None:
        """Finish every pending copy (before saving, or before reading parked tensors)."""
        if self._stream is not None:
            self._stream.synchronize()
        self._events.clear()
