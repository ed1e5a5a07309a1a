"""A Graph emulator for `archiver demo` and the tests: Entra ID's token endpoint and the
PSTN / Direct Routing call-log functions, with deterministic data and injectable faults.

    with Emulator(EmulatorConfig(page_size=500)) as emulator:
        emulator.url        # https://127.0.0.1:PORT, both the authority host and graph_url
        emulator.ca_file    # the PEM a client must trust
        emulator.rows(Kind.PSTN, start, end)   # ground truth, exactly as served
"""

from archiver.emulator.server import (
    Emulator,
    EmulatorConfig,
    EmulatorState,
    Faults,
    RequestRecord,
    build_app,
)

__all__ = ["Emulator", "EmulatorConfig", "EmulatorState", "Faults", "RequestRecord", "build_app"]
