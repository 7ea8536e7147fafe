"""The session-scoped ``launch(config)``: each backend configuration runs on 2 ranks once per session."""

import pytest
from distributed import launcher


@pytest.fixture(scope="session")
def launch(tmp_path_factory):
    done: dict[str, list[dict] | BaseException] = {}

    def run(config: str) -> list[dict]:
        if config not in done:
            try:
                done[config] = launcher.launch(config, tmp_path_factory.mktemp(config))
            except BaseException as error:  # a failed launch fails every test of it without relaunching
                done[config] = error
        if isinstance(done[config], BaseException):
            raise done[config]
        return done[config]

    return run
