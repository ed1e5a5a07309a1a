"""Configuration: precedence, parsing, and one-line errors that name the key."""

from datetime import timedelta
from pathlib import Path

import pytest

from archiver.config import PARSERS, Config, load
from archiver.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    """Each source overrides the ones below it, key by key."""
    toml = tmp_path / "a.toml"
    toml.write_text('window = "6h"\nconcurrency = 3\nrequests_per_minute = 10\n')
    env = {"ARCHIVER_CONCURRENCY": "5", "ARCHIVER_REQUESTS_PER_MINUTE": "20"}
    config = load({"requests_per_minute": "30"}, env, str(toml))
    assert timedelta(hours=6) == config.window
    assert 5 == config.concurrency
    assert 30.0 == config.requests_per_minute
    assert 180.0 == config.tenant_requests_per_minute


def test_archiver_config_variable_names_the_file(tmp_path: Path) -> None:
    """ARCHIVER_CONFIG is used when --config is not given."""
    toml = tmp_path / "b.toml"
    toml.write_text('destination = "s3://bucket/prefix"\n')
    assert "s3://bucket/prefix" == load({}, {"ARCHIVER_CONFIG": str(toml)}).destination


def test_example_config_holds_every_key_and_loads() -> None:
    """config/archiver.example.toml is valid and mentions every key."""
    example = ROOT / "config" / "archiver.example.toml"
    load({}, {}, str(example))
    text = example.read_text()
    assert [] == [key for key in PARSERS if f"{key} =" not in text]


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"window": "5h"}, {}, "configuration: window from --window: '5h' does not divide a day"),
        (
            {},
            {"ARCHIVER_CONCURRENCY": "0"},
            "configuration: concurrency from ARCHIVER_CONCURRENCY: '0' is not a positive int",
        ),
        (
            {},
            {"ARCHIVER_GRAPH_URL": "http://x"},
            "configuration: graph_url from ARCHIVER_GRAPH_URL: 'http://x' is not an https:// URL",
        ),
        (
            {"graph_version": "v2"},
            {},
            "configuration: graph_version from --graph-version: 'v2' is not one of: v1.0, beta",
        ),
        (
            {"cloud": "china"},
            {},
            "configuration: cloud from --cloud: 'china': Microsoft does not offer",
        ),
        ({"sse": "aws:kms"}, {}, "configuration: sse = aws:kms needs sse_kms_key_id"),
    ],
)
def test_bad_values_name_the_key_and_source(
    flags: dict[str, str], env: dict[str, str], message: str
) -> None:
    """A bad value is refused with a message naming the key and where it came from."""
    with pytest.raises(UsageError) as caught:
        load(flags, env)
    assert str(caught.value).startswith(message)


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    """A misspelt key in the TOML file is an error, not silently ignored."""
    toml = tmp_path / "c.toml"
    toml.write_text('windw = "1d"\n')
    with pytest.raises(UsageError) as caught:
        load({}, {}, str(toml))
    assert f"configuration: unknown key 'windw' in {toml}" == str(caught.value)


def test_national_cloud_sets_both_hosts_and_explicit_hosts_win() -> None:
    """cloud=usgov points at the US Gov hosts unless graph_url is given explicitly."""
    usgov = load({"cloud": "usgov"}, {})
    assert ("https://login.microsoftonline.us", "https://graph.microsoft.us") == (
        usgov.authority_host,
        usgov.graph_url,
    )
    dod = load({"cloud": "dod"}, {"ARCHIVER_GRAPH_URL": "https://example.test/"})
    assert "https://example.test" == dod.graph_url


def test_missing_credentials_name_what_to_set() -> None:
    """Without tenant, client or credential, the error says which variable to set."""
    with pytest.raises(UsageError, match=r"tenant_id is required \(set ARCHIVER_TENANT_ID"):
        Config().require_credentials()
    with pytest.raises(UsageError, match="no credential: set ARCHIVER_CLIENT_SECRET"):
        Config(tenant_id="t", client_id="c").require_credentials()


def test_secret_never_appears_in_repr() -> None:
    """A Config printed in a log or traceback does not show the client secret."""
    config = load({}, {"ARCHIVER_CLIENT_SECRET": "s3cr3t-value"})
    assert "s3cr3t-value" == config.client_secret
    assert "s3cr3t-value" not in repr(config)


ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - the default: every interface of the container


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        ("9464", ALL_INTERFACES, 9464),
        ("127.0.0.1:9464", "127.0.0.1", 9464),
        ("[::1]:9465", "::1", 9465),
        (":9466", ALL_INTERFACES, 9466),
    ],
)
def test_metrics_port_takes_a_port_or_host_and_port(value: str, host: str, port: int) -> None:
    """metrics_port is a port (all interfaces) or host:port, with IPv6 hosts in brackets."""
    config = load({}, {"ARCHIVER_METRICS_PORT": value})
    assert (host, port) == (config.metrics_host, config.metrics_port)


def test_metrics_port_from_the_file_is_a_number_and_host_is_no_key(tmp_path: Path) -> None:
    """A TOML integer is a port; metrics_host is derived, so the file cannot set it."""
    toml = tmp_path / "m.toml"
    toml.write_text("metrics_port = 9464\n")
    config = load({}, {}, str(toml))
    assert (ALL_INTERFACES, 9464) == (config.metrics_host, config.metrics_port)
    assert (None, ALL_INTERFACES) == (Config().metrics_port, Config().metrics_host)
    toml.write_text('metrics_host = "127.0.0.1"\n')
    with pytest.raises(UsageError) as caught:
        load({}, {}, str(toml))
    assert f"configuration: unknown key 'metrics_host' in {toml}" == str(caught.value)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("::1:9464", "'::1:9464': write an IPv6 address in brackets, as [::1]:9464"),
        ("[10.0.0.1]:9464", "'[10.0.0.1]:9464': '10.0.0.1' is not an IPv6 address"),
        ("127.0.0.1:http", "'127.0.0.1:http' is not a port, host:port or [IPv6]:port"),
        ("70000", "'70000' is not a port, host:port or [IPv6]:port"),
        ("0", "'0' is not a port, host:port or [IPv6]:port"),
    ],
)
def test_bad_metrics_port_is_one_line_naming_the_key(value: str, why: str) -> None:
    """A bad metrics_port is refused in one line that names the key, its source and the value."""
    with pytest.raises(UsageError) as caught:
        load({"metrics_port": value}, {})
    assert f"configuration: metrics_port from --metrics-port: {why}" == str(caught.value)
