"""Config fuzzing: >= 200 generated configs through ``fcos check`` (in process). Each must exit
0 or 2 with a message -- never an uncaught exception -- within 2 s and 200 MB.

The configs are generated deterministically (seed 0) from configs/fcos_b0_demo.yaml: key typos,
wrong types, reference chains and cycles, exponential references, huge and deep structures,
non-UTF-8 bytes and random YAML. Also here: the regressions these found (reference expansion
budget, bounded reads of non-regular files).
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import resource
import stat
import time
from pathlib import Path

import pytest
import yaml

from fcos_core.cli.main import main
from fcos_core.config import loader, references

DEMO = Path(__file__).resolve().parents[2] / "configs" / "fcos_b0_demo.yaml"
SEED = 0
N_CASES = 224
# CPU seconds of this process (not wall-clock): the cap is on fcos's own work, which a busy
# machine (CI runners, parallel jobs) would otherwise inflate several-fold
TIME_CAP_S = 2.0
MEM_CAP_BYTES = 200 << 20


@pytest.fixture(scope="module")
def host():
    from fcos_core.plugins import load_host

    return load_host()


# --- generators ---------------------------------------------------------------------------


def _paths(data, prefix=()):
    """Every key path of the nested mappings/lists."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def _parent(data, path):
    cur = data
    for part in path[:-1]:
        cur = cur[part]
    return cur


def _typo(rng: random.Random, word: str) -> str:
    word = str(word)
    i = rng.randrange(max(1, len(word)))
    op = rng.randrange(4)
    if op == 0 and len(word) > 1:
        return word[:i] + word[i + 1 :]  # drop a letter
    if op == 1 and len(word) > 1:
        j = min(i + 1, len(word) - 1)
        return word[:i] + word[j] + word[i] + word[j + 1 :]  # swap two letters
    if op == 2:
        return word[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz_") + word[i:]  # insert
    return word.upper() if word != word.upper() else word + "x"


WRONG = [
    None,
    True,
    False,
    0,
    -1,
    2**70,
    1.5,
    float("nan"),
    float("inf"),
    "",
    "x" * 300,
    [],
    [1, "a", None],
    {},
    {"type": "nope"},
    {"a": {"b": [1, 2]}},
    "${vars}",
    "${nope.nope}",
    "${",
    "$${x}",
    "${vars.num_classes}",
    "[",
    "\u2603",
]


_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _dump(data) -> bytes:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True).encode("utf-8")


def _key_typo(rng, base):
    data = copy.deepcopy(base)
    keys = [p for p in _paths(data) if isinstance(p[-1], str)]
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(keys)
        try:
            parent = _parent(data, path)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier typo in this case renamed one of the path's ancestors
        if path[-1] in parent:
            parent[_typo(rng, path[-1])] = parent.pop(path[-1])
    return _dump(data)


def _wrong_type(rng, base):
    data = copy.deepcopy(base)
    paths = list(_paths(data))
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(paths)
        with contextlib.suppress(KeyError, IndexError, TypeError):  # an earlier edit removed it
            _parent(data, path)[path[-1]] = copy.deepcopy(rng.choice(WRONG))
    return _dump(data)


def _references(rng, base):
    data = copy.deepcopy(base)
    v = data.setdefault("vars", {})
    kind = rng.randrange(6)
    n = rng.randint(2, 80)
    if kind == 0:  # a chain
        v["c0"] = rng.choice([1, "s", [1, 2], {"a": 1}])
        for i in range(1, n):
            v[f"c{i}"] = f"${{vars.c{i - 1}}}"
        data["seed"] = f"${{vars.c{n - 1}}}"
    elif kind == 1:  # a cycle through n keys
        for i in range(n):
            v[f"c{i}"] = (
                f"x-${{vars.c{(i + 1) % n}}}" if rng.random() < 0.5 else f"${{vars.c{(i + 1) % n}}}"
            )
        data["task_name"] = "${vars.c0}"
    elif kind == 2:  # exponential blocks
        v["e0"] = [1, 2]
        for i in range(1, n):
            v[f"e{i}"] = [f"${{vars.e{i - 1}}}"] * rng.randint(2, 4)
    elif kind == 3:  # exponential strings
        v["s0"] = "abcdefgh" * rng.randint(1, 64)
        for i in range(1, n):
            v[f"s{i}"] = f"${{vars.s{i - 1}}}" * rng.randint(2, 3)
        data["task_name"] = f"${{vars.s{n - 1}}}"
    elif kind == 4:  # references into random places, malformed ones
        paths = [p for p in _paths(base) if all(isinstance(x, str) for x in p)]
        for _ in range(rng.randint(1, 5)):
            target = (
                ".".join(rng.choice(paths))
                if rng.random() < 0.7
                else rng.choice(["", "..", "a..b", "x[", "vars[0]", "vars.neck[99]", "}", "${}"])
            )
            path = rng.choice(list(_paths(data)))
            with contextlib.suppress(KeyError, IndexError, TypeError):
                _parent(data, path)[path[-1]] = (
                    f"${{{target}}}" if rng.random() < 0.5 else f"pre-${{{target}}}-post"
                )
    else:  # deep reference stacks
        for i in range(n):
            v[f"d{i}"] = {"next": f"${{vars.d{i + 1}}}" if i + 1 < n else 0}
        data["seed"] = "${vars.d0.next}"
    return _dump(data)


def _huge_or_deep(rng, base):
    kind = rng.randrange(7)
    n = rng.choice([10, 100, 1000, 5000, 20000, 100000])
    head = b"task_name: t\nckpt_dir: d\n"
    if kind == 0:
        return head + b"vars: " + b"[" * n + b"]" * n + b"\n"
    if kind == 1:
        return head + b"vars: " + b"{a: " * n + b"1" + b"}" * n + b"\n"
    if kind == 2:
        return head + b"vars:\n" + b"".join(b"  " * (i + 1) + b"a:\n" for i in range(min(n, 3000)))
    if kind == 3:
        return head + b"vars: [" + b", ".join([b"1"] * n) + b"]\n"
    if kind == 4:
        return head + b"vars: {" + b", ".join(b"k%d: %d" % (i, i) for i in range(n)) + b"}\n"
    if kind == 5:  # an alias bomb
        lines = [b"vars:", b"  a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
        for i in range(1, rng.randint(3, 12)):
            lines.append(b"  a%d: &a%d [%s]" % (i, i, b", ".join([b"*a%d" % (i - 1)] * 10)))
        return head + b"\n".join(lines) + b"\n"
    return head + b"task_name: " + b"x" * min(n * 40, 4 << 20) + b"\n"  # long (duplicate) key


def _non_utf8(rng, base):
    raw = bytearray(DEMO.read_bytes())
    for _ in range(rng.randint(1, 20)):
        raw.insert(
            rng.randrange(len(raw)),
            rng.choice([0xFF, 0xFE, 0xC3, 0x80, 0xED, 0x00, 0x1B, 0x85, 0xA0]),
        )
    return bytes(raw)


TOKENS = [
    "a",
    "b:",
    "- ",
    ": ",
    "\n",
    "  ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&x ",
    "*x",
    "!!int ",
    "!!python/name:os.system ",
    "'",
    '"',
    "#",
    "${a}",
    "${",
    "|",
    ">",
    "? ",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "<<: ",
    "~",
    "1e999",
    "0x1f",
    "task_name",
    "ckpt_dir",
    "vars",
    "model",
    "type",
    "\t",
    "\\",
    "\ufeff",
    "!",
    "@",
]


def _random_yaml(rng, base):
    text = "".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 200)))
    if rng.random() < 0.5:
        text = "task_name: t\nckpt_dir: d\n" + text
    return text.encode("utf-8")


def _bytes_mutation(rng, base):
    raw = bytearray(DEMO.read_bytes())
    for _ in range(rng.randint(1, 10)):
        pos = rng.randrange(len(raw))
        op = rng.randrange(3)
        if op == 0:
            raw[pos] = rng.choice(b":-[]{}&*!|>'\"#\n \t$%")
        elif op == 1:
            del raw[pos : pos + rng.randint(1, 40)]
        else:
            raw[pos:pos] = raw[rng.randrange(len(raw)) :][: rng.randint(1, 200)]
    return bytes(raw)


GENERATORS = [
    _key_typo,
    _wrong_type,
    _references,
    _huge_or_deep,
    _non_utf8,
    _random_yaml,
    _bytes_mutation,
]


def generate_cases(seed: int = SEED, n: int = N_CASES) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    base = yaml.safe_load(DEMO.read_text())
    cases = []
    for i in range(n):
        gen = GENERATORS[i % len(GENERATORS)]
        cases.append((f"{i:03d}-{gen.__name__.strip('_')}", gen(rng, base)))
    return cases


# --- the fuzz test ------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        return int(next(x for x in fh if x.startswith(field + ":")).split()[1])


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_fuzzed_configs_exit_cleanly(host, tmp_path, capsys):
    assert main(["check", str(DEMO)], host=host) == 0, capsys.readouterr().err  # the base is OK
    capsys.readouterr()
    cases = generate_cases()
    assert len(cases) >= 200
    codes = {0: 0, 2: 0}
    failures = []
    for name, data in cases:
        path = tmp_path / f"{name}.yaml"
        path.write_bytes(data)
        exact = _reset_peak_rss()
        rss_before = _status_kib("VmRSS") * 1024
        t0 = time.process_time()
        try:
            code = main(["check", str(path)], host=host)
        except BaseException as exc:  # noqa: BLE001 - any escape is the failure under test
            code = f"{type(exc).__name__}: {str(exc)[:200]}"
        elapsed = time.process_time() - t0
        # the peak RSS during the case (reset before it) minus what the process held before
        # (cheap, unlike tracemalloc); without the reset, the peak since start bounds it
        grown = (
            _status_kib("VmHWM") * 1024 - rss_before
            if exact
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
        )
        out = capsys.readouterr()
        path.unlink()
        if code not in (0, 2):
            failures.append(f"{name}: escaped {code}")
            continue
        codes[code] += 1
        if code == 2 and (str(path) not in out.err or "error:" not in out.err):
            failures.append(f"{name}: exit 2 without a message naming the file: {out.err[:300]}")
        if "Traceback" in out.err:
            failures.append(f"{name}: traceback printed")
        if elapsed > TIME_CAP_S:
            failures.append(f"{name}: {elapsed:.2f} s")
        if grown > MEM_CAP_BYTES:
            failures.append(f"{name}: {grown >> 20} MiB")
    assert not failures, "\n".join(failures)
    assert codes[2] >= len(cases) // 2  # most mutants are wrong; some stay valid


def test_generation_is_deterministic():
    assert generate_cases(n=30) == generate_cases(n=30)


# --- regressions ------------------------------------------------------------------------


def _exp_blocks(levels: int) -> str:
    lines = ["task_name: t", "ckpt_dir: ./x", "vars:", "  l0: [1, 1]"]
    lines += [f'  l{i}: ["${{vars.l{i - 1}}}", "${{vars.l{i - 1}}}"]' for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [19, 40])
def test_exponential_references_hit_the_budget(levels, host, tmp_path, capsys):
    """Each level doubles the resolved document: 19 levels took 4.4 s and 376 MB, 30 levels
    exhausted memory. Now: a clear error naming the key and the budget, fast."""
    path = tmp_path / "exp.yaml"
    path.write_text(_exp_blocks(levels))
    assert len(path.read_bytes()) < 2000
    t0 = time.perf_counter()
    assert main(["check", str(path)], host=host) == 2
    assert time.perf_counter() - t0 < 2.0
    err = capsys.readouterr().err
    assert "exp.yaml" in err and "vars.l" in err
    assert f"more than {references.MAX_REFERENCE_NODES} values" in err
    assert err.count("expansion budget") == 1  # reported once, not once per key


def test_exponential_strings_hit_the_budget(host, tmp_path, capsys):
    lines = ["task_name: t", "ckpt_dir: ./x", "vars:", "  s0: abcdefghabcdefgh"]
    lines += [f'  s{i}: "${{vars.s{i - 1}}}${{vars.s{i - 1}}}"' for i in range(1, 40)]
    path = tmp_path / "str.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert main(["check", str(path)], host=host) == 2
    err = capsys.readouterr().err
    assert "str.yaml" in err and f"exceed {references.MAX_REFERENCE_CHARS} characters" in err


def test_references_below_the_budget_still_resolve(host, tmp_path, capsys):
    path = tmp_path / "ok.yaml"
    path.write_text(_exp_blocks(10))  # 2^10 leaves: a big but legitimate expansion
    assert main(["check", str(path)], host=host) == 0, capsys.readouterr().err


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "directory"])
def test_non_regular_files_are_refused_without_reading(kind, host, tmp_path, capsys):
    if kind == "dev-zero":
        path = Path("/dev/zero")
        if not path.exists():
            pytest.skip("no /dev/zero")
    elif kind == "fifo":
        path = tmp_path / "cfg.yaml"
        os.mkfifo(path)  # no writer: opening it for reading would block forever
    else:
        path = tmp_path
    t0 = time.perf_counter()
    assert main(["check", str(path)], host=host) == 2
    assert time.perf_counter() - t0 < 2.0
    err = capsys.readouterr().err
    assert str(path) in err
    assert ("directory" in err) if kind == "directory" else ("not a regular file" in err)


def test_the_read_is_capped_even_when_stat_lies(tmp_path, monkeypatch):
    """``stat`` said small but the file is big (it grew after the stat): the read stops at the
    limit instead of reading it all."""
    path = tmp_path / "big.yaml"
    with open(path, "wb") as fh:
        fh.write(b"task_name: t\n")
        fh.truncate(loader.MAX_CONFIG_BYTES + 100)  # sparse
    real_stat = os.stat

    def small_stat(p, *a, **kw):
        st = real_stat(p, *a, **kw)
        if str(p) == str(path):
            return os.stat_result((stat.S_IFREG | 0o644, *st[1:6], 10, *st[7:]))
        return st

    monkeypatch.setattr(loader.os, "stat", small_stat)
    with pytest.raises(loader.FcosUserError, match="over the limit"):
        loader.load_yaml(path)
