"""Coverage-guided fuzzing of the consumer-map loader with atheris.

Bytes go in the way ``load_config`` reads a file (size bound, then ``decode_config``, then
``parse_config``). A ``ConfigError`` that names the source is the expected answer to bad
input; any other exception, or a ConfigError without the source, is a crash.

    .venv/bin/python fuzz/fuzz_config.py -max_total_time=600 -rss_limit_mb=2048 \\
        -max_len=65536 -dict=fuzz/config.dict -artifact_prefix=/tmp/fuzz-artifacts/ \\
        /tmp/fuzz-corpus fuzz/seeds tests/corpus/malformed_maps

The first corpus directory receives the inputs that reach new code; the others are seeds.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import yaml  # noqa: F401  (instrumented: the pure-Python parser words the errors)

    from certbot_fanout import config
    from certbot_fanout.errors import ConfigError

SOURCE = "fuzz.yaml"
CERTBOT_DIRS = ("/etc/letsencrypt",)


def test_one_input(data: bytes) -> None:
    if len(data) > config.MAX_CONFIG_BYTES:
        return  # load_config refuses these before decoding
    try:
        text = config.decode_config(data, SOURCE)
        config.parse_config(text, SOURCE, certbot_dirs=CERTBOT_DIRS)
    except ConfigError as e:
        if e.source != SOURCE:
            raise AssertionError(f"a ConfigError without its source: {e!r}") from None
        str(e).encode("utf-8")  # the CLI must be able to print it


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
