"""Stopping and starting single control-plane components of the local cluster (etcd, the API
server) under a running operator, with the very command line they were started with.

The local cluster records every component's argv in its pid file; a restart is "stop the process
group, start the same argv again" on the same ports and the same etcd data directory, which is
what a crashed or upgraded API server looks like to its clients.
"""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import httpx

from dedicated.localcluster.pki import Pki
from dedicated.localcluster.procs import ProcessRecord, start_process, stop_process


class Components:
    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)

    def record(self, name: str) -> ProcessRecord:
        record = ProcessRecord.load(self.state_dir / "run" / f"{name}.pid")
        if record is None:
            raise AssertionError(f"no pid record for {name} under {self.state_dir}/run")
        return record

    def stop(self, name: str, timeout: float = 15.0) -> ProcessRecord:
        """Stop ``name`` (SIGTERM, then SIGKILL); returns its record for ``start``."""
        record = self.record(name)
        stop_process(record, timeout=timeout)
        return record

    def kill(self, name: str) -> ProcessRecord:
        """SIGKILL ``name`` at once (a crash, no graceful shutdown)."""
        return self.stop(name, timeout=0.0)

    def start(self, record: ProcessRecord) -> ProcessRecord:
        return start_process(record.name, record.argv, Path(record.log), self.state_dir / "run" / f"{record.name}.pid",
                             tie_to_parent=True)

    def wait_api_ready(self, api_server: str, timeout: float = 120.0) -> None:
        pki = Pki(self.state_dir / "pki")
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.cert("admin")), str(pki.key("admin")))
        deadline = time.monotonic() + timeout
        last = ""
        with httpx.Client(verify=context, timeout=3) as client:
            while time.monotonic() < deadline:
                try:
                    response = client.get(f"{api_server}/readyz")
                    if response.status_code == 200:
                        return
                    last = f"HTTP {response.status_code}"
                except httpx.HTTPError as err:
                    last = repr(err)
                time.sleep(0.3)
        raise AssertionError(f"the API server was not ready again after {timeout}s (last: {last})")
