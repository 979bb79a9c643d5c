"""Fuzzing the loaders of files (issue #14, item 3, "Hostile files"): IDX, .npy, .npz and .csv arrays, TOML
configs, and model directories (model.json, model.safetensors, and the training state: training.json and
training.safetensors), through ipae.load, load_state and the options that `ipae fit --config/--resume` reads.

Every input loads or is refused with ipae's own error: a ValueError or FileNotFoundError of one line that
names the file. No other exception may escape (struct.error, KeyError, MemoryError, RecursionError, ...),
no input may hang, and no header may make a loader allocate what its file does not hold. The inputs are
valid files mutated (bit flips, cuts, header edits, huge or negative sizes, wrong magic numbers and type
codes, NaN and infinite values) and files generated from scratch. The generators here drive this quick,
derandomized hypothesis run and the long seeded campaign of tests/test_fuzz_campaign.py (-m slow).

The explicit checks that follow the fuzzing: headers that claim 10^12 items are refused before anything is
allocated, paths in configs and checkpoints never lead out of their directory, and nothing is unpickled.
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import io
import json
import math
import os
import pickle
import random
import re
import resource
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ipae
from ipae.checkpoint import load_state, save_model
from ipae.cli import main
from ipae.data import arrays
from ipae.data.arrays import load_array
from ipae.data.mnist import read_idx
from ipae.fitting import OPTIONS, build_model, from_options, merged_options, read_options
from ipae.models import AutoEncoder
from ipae.networks import MLP
from ipae.rates import InformationPotential
from ipae.training import TrainConfig, train
from reliability import record

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# The most CPU time one input may take (most take a millisecond). CPU time, not wall time: on a core shared with other
# jobs the slowest .npy input of a campaign took 0.39 s of wall time on a quieter machine and 2.1 s under a load average
# of 13, so a wall-time limit would fail on the machine's load rather than on the input.
HANG_SECONDS = 10.0
TRACED_LIMIT = 64 << 20  # what numpy and Python may allocate for one input of a few KiB; a header's claim would be GiB
RSS_GROWTH_LIMIT = 1 << 30  # bytes the peak resident memory may grow over a run of torch loads (tracemalloc misses torch)
CLEAR_ERRORS = (ValueError, FileNotFoundError)  # ipae's own: the CLI prints them as one line and exits with 2


# ---------------------------------------------------------------------------------------------------------
# Inputs: mutations of valid files, and files from scratch


def some_bytes(rnd: random.Random, n: int) -> bytes:
    """n random bytes from a generator seeded by `rnd` (one draw of `rnd`, however long)."""
    return random.Random(rnd.getrandbits(64)).randbytes(n)


_FIELDS_32 = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
_FIELDS_64 = [2**63 - 1, 2**64 - 1, 10**12, 1 << 40, 1 << 32]


def mutate(rnd: random.Random, data: bytes) -> bytes:
    """`data` after 1 to 4 edits: a bit flip, a byte value, a cut, an insertion, a deletion, a repeat, a 4- or 8-byte field."""
    data = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        where, edit = rnd.randrange(len(data) + 1), rnd.randrange(8)
        if edit == 0 and data:
            data[min(where, len(data) - 1)] ^= 1 << rnd.randrange(8)
        elif edit == 1 and data:
            data[min(where, len(data) - 1)] = rnd.choice([0, 1, 0x7F, 0x80, 0xFF, rnd.randrange(256)])
        elif edit == 2:
            del data[where:]
        elif edit == 3:
            data[where:where] = some_bytes(rnd, rnd.randint(1, 16))
        elif edit == 4:
            del data[where : where + rnd.randint(1, 32)]
        elif edit == 5:
            data[where:where] = data[where : where + rnd.randint(1, 64)] * rnd.randint(1, 4)
        elif edit == 6:
            data[where : where + 4] = rnd.choice(_FIELDS_32).to_bytes(4, rnd.choice(["big", "little"]))
        else:
            data[where : where + 8] = rnd.choice(_FIELDS_64).to_bytes(8, rnd.choice(["big", "little"]))
    return bytes(data)


def idx_file(shape: tuple[int, ...], payload: bytes, *, type_code: int = 0x08) -> bytes:
    return b"\x00\x00" + bytes([type_code, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape) + payload


def idx_bytes(rnd: random.Random) -> bytes:
    """An IDX file: a valid one mutated, or a header from scratch (any type code, 0 to 255 dimensions, huge sizes)."""
    if rnd.random() < 0.35:
        shape = rnd.choice([(3,), (2, 4, 4), (2, 28, 28), (1, 1, 1, 1)])
        data = idx_file(shape, some_bytes(rnd, math.prod(shape)))
        return mutate(rnd, gzip.compress(data, mtime=0) if rnd.random() < 0.4 else data)
    ndim = rnd.choice([0, 1, 2, 3, 4, rnd.randint(0, 255)])
    shape = tuple(rnd.choice([0, 1, 1, 2, 3, 28, 255, 2**16, 2**31, 2**32 - 1, rnd.randrange(2**32)]) for _ in range(ndim))
    need = math.prod(shape)
    size = max(0, need + rnd.choice([0, 0, -1, 1])) if need <= 4096 else rnd.randrange(64)
    type_code = rnd.choice([0x08, 0x08, 0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, rnd.randrange(256)])
    data = idx_file(shape, some_bytes(rnd, size), type_code=type_code)
    if rnd.random() < 0.1:
        data = some_bytes(rnd, 2) + data[2:]  # a wrong magic number
    if rnd.random() < 0.3:
        data = gzip.compress(data, mtime=0)
    return mutate(rnd, data) if rnd.random() < 0.3 else data


_DTYPES = [np.float64, np.float32, np.float16, np.uint8, np.int64, np.int8, ">f8", ">i4", np.bool_]
_DESCRS = ["<f8", ">f8", "<f4", "<f2", "|u1", "<i8", ">i4", "|b1", "<u8", "<c16", "<U3", "|S4", "|O", "|V8", "<M8[s]"]
_ODD_DESCRS = ["[('a', '<f8')]", "[('a', '|O')]", "('<f8', (2,))", "'nope'", "5", "None", "{'names': ['a'], 'formats': ['|O']}"]
_DIMENSIONS = [0, 1, 2, 3, 3, 4, -1, 2**31, 2**63 - 1, 2**64, 10**6, 10**12]


def saved_npy(rnd: random.Random, *, odd: bool = True) -> bytes:
    """A .npy file as numpy writes it, of 2 to 4 dimensions; with `odd`, of 1 to 5, empty or not finite at times."""
    ndim = rnd.choice([1, 2, 2, 3, 4, 5]) if odd else rnd.choice([2, 2, 3, 4])
    shape = tuple(rnd.randint(0 if odd and rnd.random() < 0.1 else 1, 4) for _ in range(ndim))
    array = np.asarray(random.Random(rnd.getrandbits(64)).choices([0.0, 1.5, -2.0, 255.0, 1e5], k=math.prod(shape)))
    if odd and array.size and rnd.random() < 0.2:
        array[rnd.randrange(array.size)] = rnd.choice([math.nan, math.inf, -math.inf, 1e300])
    array = array.reshape(shape).astype(rnd.choice(_DTYPES))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        order = np.asfortranarray(array) if rnd.random() < 0.2 else array
        np.lib.format.write_array(buffer, order, version=rnd.choice([(1, 0), (2, 0)]), allow_pickle=False)
    return buffer.getvalue()


def npy_bytes(rnd: random.Random) -> bytes:
    """A .npy file: a valid one (NaN and infinities in it at times) mutated or not, or a header from scratch."""
    if rnd.random() < 0.4:
        data = saved_npy(rnd)
        return mutate(rnd, data) if rnd.random() < 0.5 else data
    descr = repr(rnd.choice(_DESCRS)) if rnd.random() < 0.85 else rnd.choice(_ODD_DESCRS)
    dims = [rnd.choice(_DIMENSIONS) for _ in range(rnd.choice([0, 1, 2, 2, 3, 4, 70]))]
    shape = rnd.choice(
        [f"({', '.join(map(str, dims))}{',' if len(dims) == 1 else ''})", str(dims), "(3, 'a')", "(1.5,)", "((((((1,),),),),),)"]
    )
    fields = {"'descr'": descr, "'fortran_order'": rnd.choice(["False", "True", "0", "'x'"]), "'shape'": shape}
    if rnd.random() < 0.1:
        del fields[rnd.choice(list(fields))]
    header = "{" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + ", }"
    if rnd.random() < 0.05:
        header = "(" * rnd.choice([100, 300, 3000]) + ")" * rnd.choice([0, 100, 300])
    if rnd.random() < 0.1:
        header = header[: rnd.randrange(len(header) + 1)]
    version = rnd.choice([(1, 0), (1, 0), (2, 0), (3, 0), (0, 0), (255, 255)])
    length_size = 4 if version[0] >= 2 else 2
    encoded = header.encode("latin-1")
    encoded += b" " * (-(8 + length_size + len(encoded) + 1) % 64) + b"\n"
    length = len(encoded) if rnd.random() < 0.9 else rnd.choice([0, 1, 2**16 - 1, 2**32 - 1])
    try:
        need = np.dtype(ast.literal_eval(descr)).itemsize * math.prod(dims)
    except Exception:
        need = 64
    size = max(0, need + rnd.choice([0, 0, -1, 8])) if 0 <= need <= 8192 else rnd.choice([0, 8, 64])
    prefix = b"\x93NUMPY" if rnd.random() < 0.95 else some_bytes(rnd, 6)
    data = prefix + bytes(version) + (length % 256**length_size).to_bytes(length_size, "little") + encoded + some_bytes(rnd, size)
    return mutate(rnd, data) if rnd.random() < 0.2 else data


_MEMBERS = ["x.npy", "x.npy", "y.npy", "x", "a.txt", "../../x.npy", "dir/x.npy"]
_COMPRESSIONS = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]


def npz_bytes(rnd: random.Random) -> bytes:
    """A .npz archive: often one array "x" as np.savez writes it, else 0 to 3 members (.npy files as above, or not), compressed
    in any way zip knows; mutated at times."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", rnd.choice(_COMPRESSIONS)) as archive:
        warnings.simplefilter("ignore")  # duplicate names are part of the game
        if rnd.random() < 0.5:
            archive.writestr("x.npy", saved_npy(rnd, odd=False) if rnd.random() < 0.6 else npy_bytes(rnd))
        else:
            for _ in range(rnd.choice([0, 1, 2, 3])):
                archive.writestr(rnd.choice(_MEMBERS), npy_bytes(rnd) if rnd.random() < 0.9 else some_bytes(rnd, 20))
    data = buffer.getvalue()
    return mutate(rnd, data) if rnd.random() < 0.3 else data


_CSV_TOKENS = ["0", "1", "-2.5", "3e-3", "+5", "1e308", "1e999", "-1e999", "nan", "NaN", "inf", "-inf", "", " ", "abc", "1_000", '"4"']
_CSV_TOKENS += ['"5', "0x10", "\x00", "\u0663", "1;2", "\ufeff1", "9" * 400, "1e-400", "-0", " 7 ", "\t8"]


def csv_bytes(rnd: random.Random) -> bytes:
    """A .csv file: rows of numbers and odd tokens, ragged at times, with a header or not, in several encodings."""
    if rnd.random() < 0.05:
        return some_bytes(rnd, rnd.randint(0, 200))
    columns = rnd.randint(1, 4)
    lines = [",".join(rnd.choice(["x", "y", '"z"', "", "1"]) for _ in range(columns))] if rnd.random() < 0.3 else []
    for _ in range(rnd.randint(0, 6)):
        width = columns + (rnd.choice([-1, 1]) if rnd.random() < 0.1 else 0)
        lines.append(",".join(rnd.choice(_CSV_TOKENS) if rnd.random() < 0.2 else repr(rnd.uniform(-10, 10)) for _ in range(width)))
    if rnd.random() < 0.01:
        lines.append("1" * 200_000)  # over csv's field size limit
    text = rnd.choice(["\n", "\r\n", "\r"]).join(lines) + rnd.choice(["", "\n", "\n\n"])
    data = text.encode(rnd.choice(["utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1"]), errors="replace")
    return mutate(rnd, data) if rnd.random() < 0.3 else data


_TOML_NAMES = [*OPTIONS, *(name.replace("_", "-") for name in OPTIONS), "width", "out", "model", '"a\\nb"', "a.b"]
_TOML_SCALARS = ["0", "1", "-1", "2", "16", "2048", "99999999999999999999", "9223372036854775807", "0x7fffffff", "1_000", "0.5", "1e-3"]
_TOML_SCALARS += ["1e400", "nan", "inf", "-inf", "-0.0", "true", "false", "1979-05-27T07:32:00Z", "07:32:00", "'literal'", '"""a\nb"""']
_TOML_STRINGS = ["x.npy", "sub/x.npy", "../outside.npy", "../../etc/passwd", "/etc/passwd", "link.npy", "sub/../x.npy", "", "\\u0000"]
_TOML_STRINGS += ["ip", "vae", "mc", "all", "conv", "mlp", "relu", "tanh", "mse", "bernoulli", "fp32", "auto", "bf16", "x"]


def toml_value(rnd: random.Random, depth: int = 0) -> str:
    pick = rnd.random()
    if pick < 0.45 or depth > 2:
        return rnd.choice(_TOML_SCALARS)
    if pick < 0.8:
        return f'"{rnd.choice(_TOML_STRINGS)}"'
    if pick < 0.95:
        return "[" + ", ".join(toml_value(rnd, depth + 1) for _ in range(rnd.randint(0, 3))) + "]"
    return "{a = " + toml_value(rnd, depth + 1) + "}"


TOML_SEED = 'data = "x.npy"\nhidden = [16, 8]\nn-components = 2\nsteps = 3\nn_partners = "all"\nbeta = 0.2\nrate = "ip"\nlr = 0.01\n'


def toml_bytes(rnd: random.Random) -> bytes:
    """A config: options (known, misspelt, with - or _) set to values of every TOML type, tables, deep arrays; or a mutated one."""
    if rnd.random() < 0.25:
        return mutate(rnd, TOML_SEED.encode())
    lines = [f"{rnd.choice(_TOML_NAMES)} = {toml_value(rnd)}" for _ in range(rnd.randint(0, 6))]
    if rnd.random() < 0.05:
        depth = rnd.choice([100, 1000, 5000])
        lines.append(f"{rnd.choice(_TOML_NAMES)} = {'[' * depth}{']' * depth}")
    if rnd.random() < 0.05:
        lines.insert(rnd.randint(0, len(lines)), rnd.choice(["[table]", "[[rows]]", "# a comment", "data = 1\ndata = 2"]))
    return "\n".join(lines).encode() + b"\n"


_JSON_VALUES = [None, True, False, 0, 1, -1, 2, 3, 16, 2**31, 2**63, 10**30, -(10**30), 10**5, 0.5, -1.0, 1e308, math.nan, math.inf]
_JSON_VALUES += [-math.inf, "", "ip", "vae", "mc", "mlp", "conv", "relu", "mse", "bernoulli", "IPAE", "BetaVAE", "cuda", "fp32"]
_JSON_VALUES += ["../../outside.npy", "/etc/passwd", "a\nb", "\x00", "x" * 300, [], {}, [3], [4, 4], [10**6, 10**6], [2**40]]
_JSON_VALUES += [{"name": "ip"}, {"kind": "mlp"}, {"0": ["exp_avg"]}, [{"params": [0]}]]
_DEEP = "\x00deep\x00"  # replaced by arrays nested thousands deep once the rest is JSON


def json_value(rnd: random.Random, depth: int = 0) -> object:
    pick = rnd.random()
    if pick < 0.75 or depth > 2:
        return json.loads(json.dumps(rnd.choice(_JSON_VALUES)))  # a copy
    if pick < 0.9:
        return [json_value(rnd, depth + 1) for _ in range(rnd.randint(0, 3))]
    return {
        rnd.choice(["name", "kind", "hidden", "params", "step", "0", "x"]): json_value(rnd, depth + 1) for _ in range(rnd.randint(0, 3))
    }


def _places(container: object) -> Iterator[tuple[object, object]]:
    """(container, key) of every value in a JSON tree."""
    keys = container.keys() if isinstance(container, dict) else range(len(container)) if isinstance(container, list) else ()
    for key in list(keys):
        yield container, key
        yield from _places(container[key])


def mutate_json(rnd: random.Random, text: bytes) -> bytes:
    """A JSON file after 1 to 3 edits of its tree (a value replaced, removed or added; arrays nested deep), or of its bytes."""
    if rnd.random() < 0.2:
        return mutate(rnd, text)
    root = [json.loads(text)]
    for _ in range(rnd.randint(1, 3)):
        container, key = rnd.choice(list(_places(root)))
        edit = rnd.randrange(10)
        if edit < 6:
            container[key] = json_value(rnd)
        elif edit < 8 and container is not root:
            del container[key]
        elif edit < 9 and isinstance(container[key], dict):
            container[key][rnd.choice(["estimator", "fit", "x", "weights", "path", "kind", "name"])] = json_value(rnd)
        else:
            container[key] = _DEEP
    deep = rnd.choice([1000, 100_000])
    return json.dumps(root[0]).replace(json.dumps(_DEEP), "[" * deep + "]" * deep).encode()


_ST_DTYPES = ["F32", "F64", "F16", "BF16", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "C64", "U64", "XX", 5, None]
_ST_SHAPES = [[], [0], [1], [2**31], [2**63], [-1], [10**6, 10**6], [3, 4], "x", [1.5]]


def mutate_safetensors(rnd: random.Random, data: bytes) -> bytes:
    """A safetensors file after 1 to 3 edits of its JSON header (dtypes, shapes, offsets, names, the header's length)
    or of its tensors (NaN and infinities), or of its bytes."""
    if rnd.random() < 0.25:
        return mutate(rnd, data)
    length = int.from_bytes(data[:8], "little")
    header, body = json.loads(data[8 : 8 + length]), bytearray(data[8 + length :])
    for _ in range(rnd.randint(1, 3)):
        names = [name for name in header if name != "__metadata__"]
        if not names:
            break
        name, edit = rnd.choice(names), rnd.randrange(9)
        entry = header[name]
        if edit == 0 and isinstance(entry, dict):
            entry["dtype"] = rnd.choice(_ST_DTYPES)
        elif edit == 1 and isinstance(entry, dict):
            entry["shape"] = rnd.choice(_ST_SHAPES)
        elif edit == 2 and isinstance(entry, dict):
            entry["data_offsets"] = [rnd.choice([0, 4, len(body), len(body) + 4, 2**63, -1]) for _ in range(2)]
        elif edit == 3:
            header[rnd.choice(["generator", "history", name + "x", "", "a\nb", "optimizer.0.exp_avg"])] = header.pop(name)
        elif edit == 4:
            del header[name]
        elif edit == 5:
            header["__metadata__"] = rnd.choice([{"format": "pt"}, {"a": "1"}, [], "x", None])
        elif edit < 8 and isinstance(entry, dict) and entry.get("dtype") in ("F32", "F64"):
            start, end = entry.get("data_offsets", [0, 0])
            size = 4 if entry["dtype"] == "F32" else 8
            if 0 <= start and (end - start) // size > 0:
                at = start + size * rnd.randrange((end - start) // size)
                body[at : at + size] = struct.pack("<f" if size == 4 else "<d", rnd.choice([math.nan, math.inf, -math.inf]))
        else:
            header[name] = json_value(rnd)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    length = len(encoded) if rnd.random() < 0.9 else rnd.choice([0, 1, len(encoded) + 8, 2**63, 2**64 - 1, 10**9])
    return length.to_bytes(8, "little") + encoded + bytes(body)


# ---------------------------------------------------------------------------------------------------------
# Targets: how one input is written and loaded, and what its errors must name


Step = tuple[Callable[[object], object], tuple[str, ...]]  # a load (of the step before's result), the names its error must hold


@dataclass
class Case:
    """One input: chains of steps, each run until a step refuses it. A step with no names may refuse with
    any one-line ValueError (it checks how a file's options combine, not the file)."""

    chains: list[list[Step]]


@dataclass
class Seeds:
    """Valid model directories, as {file name: bytes}, that the model targets mutate."""

    models: list[dict[str, bytes]]  # a model with its training state and fit options, and a saved estimator
    state: dict[str, bytes]


def put(path: Path, data: bytes) -> None:
    """Write `data` to a new file at `path`: ext4 flushes a file that is truncated and written again (4 ms a time)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def _write(directory: Path, files: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        put(directory / name, data)
    return directory


def idx_case(rnd: random.Random, work: Path, seeds: Seeds) -> Case:
    path = work / "images-idx3-ubyte"
    put(path, idx_bytes(rnd))
    return Case([[(lambda _: read_idx(path), (str(path),))]])


def _array_case(path: Path, rnd: random.Random, key: str | None = None) -> Case:
    mmap = path.suffix == ".npy" and rnd.random() < 0.3  # MMAP_BYTES is 0 here: the memory-mapped path
    return Case([[(lambda _: load_array(path, key=key, max_ndim=4, mmap=mmap), (str(path),))]])


def npy_case(rnd: random.Random, work: Path, seeds: Seeds) -> Case:
    path = work / "x.npy"
    put(path, npy_bytes(rnd))
    return _array_case(path, rnd)


def npz_case(rnd: random.Random, work: Path, seeds: Seeds) -> Case:
    path = work / "x.npz"
    put(path, npz_bytes(rnd))
    return _array_case(path, rnd, key=rnd.choice([None, None, None, "x", "x", "y", "a.txt", "zz"]))


def csv_case(rnd: random.Random, work: Path, seeds: Seeds) -> Case:
    path = work / "x.csv"
    put(path, csv_bytes(rnd))
    return _array_case(path, rnd)


def config_files(work: Path) -> Path:
    """work/config/ with data in it, a link out of it, and work/outside.npy beside it: the config's world."""
    folder = work / "config"
    if not (folder / "link.npy").is_symlink():  # made once per directory
        (folder / "sub").mkdir(parents=True, exist_ok=True)
        for path in (folder / "x.npy", folder / "sub" / "x.npy", work / "outside.npy"):
            np.save(path, np.ones((4, 3)))
        (folder / "link.npy").symlink_to(work / "outside.npy")
    return folder


def check_confined(options: dict, config: Path) -> dict:
    """Fail unless a relative `data` of the config was taken under the config's directory (the rule of read_options)."""
    if "data" in options:
        written = tomllib.loads(config.read_text(encoding="utf-8"))["data"]
        assert Path(options["data"]).is_absolute(), options
        if not Path(written).is_absolute():
            assert Path(options["data"]).resolve().is_relative_to(config.parent.resolve()), (written, options["data"])
    return options


def toml_case(rnd: random.Random, work: Path, seeds: Seeds) -> Case:
    path = config_files(work) / "c.toml"
    put(path, toml_bytes(rnd))
    given = {"data": str(work / "outside.npy")}  # the command line's data: the config's own is checked all the same
    return Case(
        [
            [(lambda _: read_options(path), (str(path),)), (lambda options: check_confined(options, path), ())],
            [(lambda _: merged_options(given, config=path), (str(path),)), (lambda options: from_options(options), ())],
        ]
    )


def _model_chains(directory: Path, work: Path) -> list[list[Step]]:
    given = {"data": str(work / "outside.npy")}
    return [
        [(lambda _: ipae.load(directory), (str(directory),))],
        [(lambda _: merged_options(given, resume=directory), (str(directory),)), (lambda options: from_options(options), ())],
    ]


def model_json_case(rnd: random.Random, work: Path, seeds: Seeds) -> Case:
    files = dict(rnd.choice(seeds.models))
    files["model.json"] = mutate_json(rnd, files["model.json"])
    return Case(_model_chains(_write(work / "model", files), work))


def safetensors_case(rnd: random.Random, work: Path, seeds: Seeds) -> Case:
    files = dict(rnd.choice(seeds.models))
    files["model.safetensors"] = mutate_safetensors(rnd, files["model.safetensors"])
    return Case(_model_chains(_write(work / "model", files), work)[:1])


def state_case(rnd: random.Random, work: Path, seeds: Seeds) -> Case:
    files = {name: seeds.state[name] for name in ("training.json", "training.safetensors")}
    if rnd.random() < 0.5:
        files["training.json"] = mutate_json(rnd, files["training.json"])
    else:
        files["training.safetensors"] = mutate_safetensors(rnd, files["training.safetensors"])
    directory = _write(work / "state", files)
    return Case([[(lambda _: load_state(directory), (str(directory),))]])


@dataclass(frozen=True)
class Target:
    name: str  # as the reliability page shows it
    make: Callable[[random.Random, Path, Seeds], Case]
    traced: bool  # numpy and Python allocate (tracemalloc sees them); else torch does, and the peak RSS is watched


TARGETS = [
    Target("IDX loader (read_idx)", idx_case, traced=True),
    Target("array loader, .npy", npy_case, traced=True),
    Target("array loader, .npz", npz_case, traced=True),
    Target("array loader, .csv", csv_case, traced=True),
    Target("TOML config (read_options, merged_options)", toml_case, traced=True),
    Target("model.json (ipae.load, fit --resume options)", model_json_case, traced=False),
    Target("model.safetensors (ipae.load)", safetensors_case, traced=False),
    Target("training state (load_state)", state_case, traced=False),
]


# ---------------------------------------------------------------------------------------------------------
# The check of one input


@dataclass
class Tally:
    tried: int = 0
    loaded: int = 0  # every chain loaded
    refused: int = 0  # some chain refused, with ipae's one-line error naming the file
    slowest: float = 0.0  # seconds of CPU time
    largest: int = 0  # bytes: the most numpy and Python allocated for one input (traced targets)
    rss_growth: int | None = None  # bytes the peak resident memory grew over the run (torch targets)

    def detail(self) -> str:
        memory = f", at most {self.largest / 2**20:.1f} MiB allocated for one input" if self.largest else ""
        if self.rss_growth is not None:
            memory = f", peak resident memory grew {self.rss_growth / 2**20:.0f} MiB over the run"
        return f"{self.loaded} loaded, {self.refused} refused; no other exception; slowest {self.slowest:.2f} s of CPU{memory}"


def attempt(target: Target, case: Case, tally: Tally, where: str) -> None:
    """Run one input's chains; fail on any exception but ipae's one-line errors naming the file, on a hang, on a big allocation."""
    refused, peak = False, 0
    if target.traced:
        tracemalloc.start()  # around the loads only: tracing the generators and hypothesis too would slow them tenfold
    try:
        start = time.process_time()
        for chain in case.chains:
            result = None
            for load, names in chain:
                try:
                    result = load(result)
                except CLEAR_ERRORS as error:
                    message = str(error)
                    assert "\n" not in message, f"{where}: a message of several lines: {message!r}"
                    assert not names or any(name in message for name in names), f"{where}: the message names no file: {message!r}"
                    refused = True
                    break
        elapsed = time.process_time() - start
        if target.traced:
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        if target.traced:
            tracemalloc.stop()
    assert elapsed < HANG_SECONDS, f"{where}: took {elapsed:.1f} s of CPU"
    assert peak < TRACED_LIMIT, f"{where}: allocated {peak / 2**20:.0f} MiB"
    tally.tried += 1
    tally.refused += refused
    tally.loaded += not refused
    tally.slowest = max(tally.slowest, elapsed)
    tally.largest = max(tally.largest, peak)


@contextlib.contextmanager
def fuzzing(traced: bool, tally: Tally) -> Iterator[None]:
    """Where inputs are tried: the peak RSS watched (tracemalloc misses torch), every .npy memory-mapped where mmap=True is asked."""
    before, saved = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, arrays.MMAP_BYTES
    arrays.MMAP_BYTES = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy, zipfile and torch warn about odd files; the test is what they raise
            yield
    finally:
        arrays.MMAP_BYTES = saved
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    tally.rss_growth = None if traced else growth
    assert growth < RSS_GROWTH_LIMIT, f"the peak resident memory grew by {growth / 2**20:.0f} MiB"


def make_seeds(directory: Path) -> Seeds:
    """A small model trained 3 steps (with its state and fit options), and a fitted IPAE estimator, saved."""
    model = AutoEncoder.from_architecture(MLP((3,), (4,), 2), rate=InformationPotential(2), beta=0.5)
    data = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    result = train(model, data, TrainConfig(steps=3, batch_size=8, progress=False, log_every=1))
    fit = {"data": str(directory / "x.npy"), "hidden": [4], "n_components": 2, "rate": "ip", "steps": 3, "batch_size": 8}
    save_model(model, directory / "model", state=result.state, metadata={"fit": fit})
    estimator = ipae.IPAE(n_components=2, hidden=(4,), steps=2, batch_size=8, random_state=0).fit(data.numpy())
    ipae.save(estimator, directory / "estimator")

    def files(folder: Path, names: tuple[str, ...]) -> dict[str, bytes]:
        return {name: (folder / name).read_bytes() for name in names}

    model_files = ("model.json", "model.safetensors")
    return Seeds(
        models=[files(directory / "model", model_files), files(directory / "estimator", model_files)],
        state=files(directory / "model", (*model_files, "training.json", "training.safetensors")),
    )


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Seeds:
    return make_seeds(tmp_path_factory.mktemp("seeds"))


def test_the_seeds_load(seeds, tmp_path):
    """The valid files the fuzzing starts from load: else every mutation would be refused for the wrong reason."""
    for index, files in enumerate(seeds.models):
        assert isinstance(ipae.load(_write(tmp_path / str(index), files)), AutoEncoder | ipae.IPAE)
    assert load_state(_write(tmp_path / "state", seeds.state)).step == 3
    assert read_options(_write(tmp_path / "c", {"c.toml": TOML_SEED.encode(), "x.npy": b""}) / "c.toml")["steps"] == 3


def test_an_input_fails_on_the_cpu_time_it_takes_not_on_the_time_it_waits(monkeypatch):
    """A busy machine stretches an input's wall time; the check counts the CPU time that the input itself spends."""
    monkeypatch.setitem(globals(), "HANG_SECONDS", 0.2)
    target = Target("sleeps, then spins", lambda *_: None, traced=False)

    def spin(_):
        start = time.process_time()
        while time.process_time() - start < 0.4:
            pass

    waited = Tally()
    attempt(target, Case([[(lambda _: time.sleep(0.6), ())]]), waited, "a wait")  # 3 limits of wall time, no CPU
    assert waited.tried == 1 and waited.slowest < 0.2
    with pytest.raises(AssertionError, match=r"a spin: took 0\.\d s of CPU"):
        attempt(target, Case([[(spin, ())]]), Tally(), "a spin")


# ---------------------------------------------------------------------------------------------------------
# The quick run: hypothesis draws the choices of the generators above (derandomized: the same inputs every run)

EXAMPLES = 150  # per target: the whole file runs in well under a minute on 2 cores


@pytest.mark.parametrize("target", TARGETS, ids=lambda target: target.name.split(" (")[0])
def test_fuzz(target, seeds, tmp_path):
    tally = Tally()

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(rnd=st.randoms(use_true_random=False))
    def one(rnd):
        attempt(target, target.make(rnd, tmp_path, seeds), tally, f"{target.name}, hypothesis")

    with fuzzing(target.traced, tally):
        one()
    assert tally.tried >= EXAMPLES and tally.loaded and tally.refused, tally  # both outcomes: the inputs reach past the first check
    record(
        "fuzz",
        target.name,
        tried=tally.tried,
        outcome="loaded, or refused with ipae's one-line error naming the file",
        detail=tally.detail(),
    )


# ---------------------------------------------------------------------------------------------------------
# Headers that claim 10^12 items: refused before anything is allocated


def _npy_header(shape: tuple[int, ...], descr: str = "<f8", version: tuple[int, int] = (1, 0)) -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    size = 4 if version == (2, 0) else 2
    header += b" " * (-(8 + size + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY" + bytes(version) + len(header).to_bytes(size, "little") + header


def _npz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _lzma_npz(dictionary: int) -> bytes:
    """A .npz of one small array compressed by LZMA, whose header claims a dictionary of `dictionary` bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_LZMA) as archive:
        archive.writestr("x.npy", _npy_header((1, 1)) + bytes(8))
    data = bytearray(buffer.getvalue())
    at = 30 + len("x.npy") + 4 + 1  # the local header, the name, LZMA's version and properties size, then lc/lp/pb
    data[at : at + 4] = dictionary.to_bytes(4, "little")
    return bytes(data)


def _huge_headers(tmp_path: Path) -> list[tuple[Path, Callable[[], object], str]]:
    """(file, its load, a fragment of the refusal) for tiny files whose headers claim terabytes."""
    cases = []

    def add(name: str, data: bytes, load: Callable[[Path], object], fragment: str) -> None:
        path = tmp_path / name
        path.write_bytes(data)
        cases.append((path, lambda: load(path), fragment))

    tera = (10_000, 10_000, 10_000)  # 10^12 bytes of pixels
    add("tera-idx3-ubyte", idx_file(tera, b"\x00" * 16), read_idx, "needs 1000000000000 bytes, the file has 16")
    add("tera-idx3-ubyte.gz", gzip.compress(idx_file(tera, b"")), read_idx, "needs 1000000000000 bytes, a gzipped file of")
    add("wrap-idx4-ubyte", idx_file((65536,) * 4, b""), read_idx, "needs 18446744073709551616 bytes")  # 0 in int64
    add("max-idx-ubyte", idx_file((2**32 - 1,) * 255, b""), read_idx, "payload truncated")
    # gzip of 64 MiB of zeros whose header claims one byte: read no further than the header says
    add("bomb-idx1-ubyte.gz", gzip.compress(idx_file((1,), bytes(64 << 20))), read_idx, "payload too long")
    add("tera.npy", _npy_header((10**6, 10**6)), load_array, "declares (1000000, 1000000) float64, 8000000000000 bytes")
    add("tera2.npy", _npy_header((10**6, 10**6), version=(2, 0)), load_array, "8000000000000 bytes, but 0 bytes follow")
    add("overflow.npy", _npy_header((2**62, 2**62)), load_array, "bytes, but 0 bytes follow")
    long_header = b"\x93NUMPY\x02\x00" + (2**32 - 1).to_bytes(4, "little")  # a 4 GiB header (numpy reads it whole)
    add("long-header.npy", long_header, load_array, "a header of 4294967295 bytes")
    add("tera.npz", _npz({"x.npy": _npy_header((10**6, 10**6))}), load_array, "8000000000000 bytes, but 0 bytes follow")
    add("long-header.npz", _npz({"x.npy": long_header}), load_array, "a header of 4294967295 bytes")
    add("lzma.npz", _lzma_npz(dictionary=2**32 - 1), load_array, "numpy writes stored or deflated arrays only")
    add("mapped.npy", _npy_header((10**6, 10**6)), lambda path: load_array(path, mmap=True), "8000000000000 bytes")
    return cases


def test_headers_claiming_terabytes_are_refused_before_allocating(tmp_path, monkeypatch):
    monkeypatch.setattr(arrays, "MMAP_BYTES", 0)
    cases = _huge_headers(tmp_path)
    tracemalloc.start()
    try:
        for path, load, fragment in cases:
            tracemalloc.reset_peak()
            with pytest.raises(ValueError, match=re.escape(fragment)) as info:
                load()
            peak = tracemalloc.get_traced_memory()[1]
            assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
            assert peak < 4 << 20, f"{path.name}: {peak / 2**20:.0f} MiB allocated before the refusal"  # the gzip bomb reads 1 MiB at most
    finally:
        tracemalloc.stop()
    record(
        "bad input",
        "header claiming a huge shape (IDX, gzipped IDX, .npy, .npz, memory-mapped .npy)",
        tried=len(cases),
        outcome="refused before allocating: under 4 MiB traced per file",
        detail="10^12 items, 255 dimensions of 2^32 - 1, sizes that wrap int64, a 4 GiB .npy header, a 4 GiB LZMA dictionary, "
        "64 MiB of gzip behind a 1-byte header",
    )


def test_a_model_json_claiming_a_huge_network_is_refused_before_building_it(seeds, tmp_path):
    """model.json's architecture is compared with the weights' shapes before any memory is taken for it: in a
    fresh process, a claim of 2 GiB of weights leaves the peak resident memory where it was, and one of 4 TiB
    (which torch cannot allocate) is the same clear refusal."""
    claims = {"2 GiB": [16384, 16384], "4 TiB": [10**6, 10**6], "2^80": [2**40, 2**40]}
    for name, hidden in claims.items():
        record_ = json.loads(seeds.models[0]["model.json"])
        record_["model"]["architecture"]["hidden"] = hidden
        _write(tmp_path / name, {**seeds.models[0], "model.json": json.dumps(record_).encode()})
    script = textwrap.dedent(
        """
        import resource, sys
        from ipae.checkpoint import load_model
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for directory in sys.argv[1:]:
            try:
                load_model(directory)
            except ValueError as error:
                print("refused:", error)
        print("growth_kib:", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        """
    )
    names = [str(tmp_path / name) for name in claims]
    done = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    refusals = [line for line in lines if line.startswith("refused:")]
    clear = ("model.safetensors: the weights do not fit the architecture", "model.json: not a valid model description")
    assert len(refusals) == len(claims) and all(any(reason in line for reason in clear) for line in refusals), refusals
    growth = int(lines[-1].split()[1]) * 1024
    assert growth < 256 << 20, f"loading grew the peak resident memory by {growth / 2**20:.0f} MiB"
    record(
        "bad input",
        "model.json claiming a huge network",
        tried=len(claims),
        outcome="refused before building it (the peak RSS of a fresh process grew under 256 MiB)",
        detail=f"hidden sizes of {', '.join(claims)} beside the weights of a 2-layer toy model; measured growth {growth / 2**20:.0f} MiB",
    )


# ---------------------------------------------------------------------------------------------------------
# Paths: a config or a checkpoint never leads out of its directory


def test_a_config_names_data_only_in_its_own_directory(tmp_path, monkeypatch):
    folder = config_files(tmp_path)
    config = folder / "c.toml"
    refused = ["../outside.npy", "sub/../../outside.npy", "link.npy", "../../../../../../etc/passwd", "\x00"]
    for data in refused:
        config.write_text(f"data = {json.dumps(data)}\n")
        with pytest.raises(ValueError) as info:
            read_options(config)
        message = str(info.value)
        assert message.startswith(str(config)) and "\n" not in message and ("leads outside" in message or "not a usable path" in message)
    monkeypatch.chdir(tmp_path)  # where tmp_path/x.npy would be found if relative paths were taken from here
    np.save(tmp_path / "x.npy", np.zeros((2, 2)))
    config.write_text('data = "x.npy"\n')
    assert read_options(config)["data"] == str((folder / "x.npy").resolve())
    config.write_text('data = "sub/../sub/x.npy"\n')
    assert read_options(config)["data"] == str((folder / "sub" / "x.npy").resolve())
    config.write_text(f"data = {json.dumps(str(tmp_path / 'outside.npy'))}\n")  # absolute: as written, like the command line's
    assert read_options(config)["data"] == str(tmp_path / "outside.npy")
    # the command line: one line, exit code 2, nothing written
    config.write_text('data = "../outside.npy"\nsteps = 1\n')
    out, error = tmp_path / "out", io.StringIO()
    with contextlib.redirect_stderr(error):
        assert main(["fit", "--config", str(config), "--quiet", "--out", str(out)]) == 2
    assert error.getvalue().startswith(f"ipae: error: {config}: data '../outside.npy' leads outside") and error.getvalue().count("\n") == 1
    assert not out.exists()
    record(
        "bad input",
        "config path leaving its directory",
        tried=len(refused) + 1,
        outcome="refused naming the config; `ipae fit --config` exits 2 with one line and writes nothing",
        detail="relative data is under the config's directory (.., a symbolic link out, a NUL byte refused); absolute data as written",
    )


def test_a_checkpoint_names_no_file_outside_its_directory(seeds, tmp_path):
    """Loading a model directory opens its own files and nothing else, whatever model.json's metadata names;
    the data a fit recorded, used by `ipae fit --resume`, follows the config's rule."""
    files = dict(seeds.models[0])
    record_ = json.loads(files["model.json"])
    secret = tmp_path / "secret.npy"
    np.save(secret, np.ones((3, 3)))
    record_["metadata"] |= {"weights": str(secret), "path": "../secret.npy", "model.safetensors": "../secret.npy"}
    directory = _write(tmp_path / "model", {**files, "model.json": json.dumps(record_).encode()})
    with opened_files() as opened:
        ipae.load(directory)
    assert opened and all(Path(path).resolve().is_relative_to(directory.resolve()) for path in opened), opened
    cases = 0
    for data in ["../secret.npy", "../../secret.npy"]:
        record_["metadata"]["fit"]["data"] = data
        (directory / "model.json").write_text(json.dumps(record_))
        with pytest.raises(ValueError, match=f"model.json: data '{re.escape(data)}' leads outside"):
            merged_options({}, resume=directory)
        cases += 1
    record_["metadata"]["fit"]["data"] = "inside.npy"
    (directory / "model.json").write_text(json.dumps(record_))
    assert merged_options({}, resume=directory)["data"] == str((directory / "inside.npy").resolve())
    record(
        "bad input",
        "checkpoint path leaving its directory",
        tried=cases + 1,
        outcome="loading opens only the directory's own files; a recorded relative data path out of it is refused",
        detail="paths in model.json's metadata are never followed by ipae.load (Python-level opens audited)",
    )


_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
        _OPENED.append(os.fsdecode(args[0]))


@contextlib.contextmanager
def opened_files() -> Iterator[list[str]]:
    """The files Python opens in the block (an audit hook, installed once: hooks cannot be removed)."""
    global _OPENED
    if not getattr(opened_files, "installed", False):
        sys.addaudithook(_audit)
        opened_files.installed = True
    _OPENED = []
    try:
        yield _OPENED
    finally:
        _OPENED = None


# ---------------------------------------------------------------------------------------------------------
# Code: nothing is unpickled


class Plant:
    """A pickle that, when loaded, creates the file `marker`: what a malicious file would do with a shell."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_payloads_are_refused_and_never_run(seeds, tmp_path):
    marker = tmp_path / "planted"
    objects = np.array([[Plant(marker), 1.0]], dtype=object)
    structured = np.array([(Plant(marker), 1.0)], dtype=[("a", object), ("b", float)])

    def npy(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=True)
        return buffer.getvalue()

    payload = pickle.dumps(Plant(marker))
    assert b"planted" in payload
    torch_zip = io.BytesIO()
    torch.save({"x": Plant(marker)}, torch_zip)
    cases = {
        "objects.npy": (npy(objects), load_array),
        "structured.npy": (npy(structured), load_array),
        "objects.npz": (_npz({"x.npy": npy(objects)}), load_array),
        "pickle.npy": (payload, load_array),
        "pickle.npz": (payload, load_array),
    }
    for name, (data, load) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError) as info:
            load(tmp_path / name)
        assert str(info.value).startswith(str(tmp_path / name)) and "\n" not in str(info.value)
    for weights in (payload, torch_zip.getvalue()):
        for name in ("model.safetensors", "training.safetensors"):
            directory = _write(tmp_path / f"model-{len(weights)}-{name}", {**seeds.state, name: weights})
            with pytest.raises(ValueError, match=f"{name}: damaged or not a safetensors file"):
                ipae.load(directory) if name == "model.safetensors" else load_state(directory)
            cases[f"{name} ({len(weights)} bytes)"] = None
    assert not marker.exists()
    pickle.loads(payload)  # the plant works: had a loader unpickled, the marker would be there
    assert marker.exists()
    record(
        "bad input",
        "pickled payloads (.npy, .npz, safetensors)",
        tried=len(cases),
        outcome="refused; the payload never ran",
        detail="object and structured-object .npy and .npz arrays, raw pickles, torch.save files in place of safetensors",
    )


# ---------------------------------------------------------------------------------------------------------
# Bugs the fuzzing found, one example each (each failed before its fix)


def test_each_bug_found_is_fixed(seeds, tmp_path):
    def refuses(make: Callable[[Path], Path], load: Callable[[Path], object], fragment: str) -> None:
        """Note a failure unless `load` refuses the file `make` writes with a one-line ValueError naming it and holding `fragment`."""
        path = make(tmp_path / f"case{len(examples)}")
        examples.append(fragment)
        try:
            load(path)
            failures.append(f"{fragment}: loaded")
        except Exception as error:  # noqa: BLE001 (any other exception is what the fixes removed: noted, then asserted on)
            message = str(error)
            if not (isinstance(error, ValueError) and fragment in message and str(path) in message and "\n" not in message):
                failures.append(f"{fragment}: {type(error).__name__}: {message[:200]}")

    def file(name: str, data: bytes) -> Callable[[Path], Path]:
        def make(folder: Path) -> Path:
            folder.mkdir()
            (folder / name).write_bytes(data)
            return folder / name

        return make

    def model(name: str, edit: Callable[[dict], object]) -> Callable[[Path], Path]:
        def make(folder: Path) -> Path:
            files = dict(seeds.state)
            value = json.loads(files[name])
            files[name] = json.dumps(edit(value)).encode()
            return _write(folder, files)

        return make

    examples: list[str] = []
    failures: list[str] = []
    refuses(file("x-idx1-ubyte", idx_file((1,) * 65, b"\x00")), read_idx, "is not one an array can have")  # a raw numpy ValueError
    refuses(file("x.npy", b"\x93NUMPY\x01\x00\x08\x00{'a': (\n"), load_array, "not a readable .npy array")  # tokenize.TokenError
    refuses(file("x.npz", _npz({"a.txt": b"text"})), load_array, "no .npy magic string")  # AttributeError: bytes have no dtype
    refuses(file("x.npy", _npy_header((0, 2**64))), load_array, "a dimension outside 0..")  # OverflowError: no items, a huge dimension
    bzip = io.BytesIO()
    with zipfile.ZipFile(bzip, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr("x.npy", _npy_header((1, 1)) + bytes(8))
    flags = bytearray(bzip.getvalue())
    flags[flags.index(b"PK\x01\x02") + 10] = 99  # the member's compression method in the zip directory: one zipfile does not know
    refuses(file("x.npz", bytes(flags)), load_array, "not a readable .npz archive")  # NotImplementedError
    refuses(file("c.toml", b"x = " + b"[" * 5000 + b"]" * 5000), read_options, "not valid TOML")  # RecursionError
    refuses(file("c.toml", b'rate = ["ip"]'), options_of_config, "rate must be a string")  # TypeError: unhashable list
    refuses(file("c.toml", b"data = 5"), options_of_config, "data must be a string")  # TypeError in Path()
    refuses(file("c.toml", b"beta = 1" + b"0" * 400), model_of_config, "beta must be a finite number")  # OverflowError, building
    refuses(model("model.json", lambda r: r | {"format": []}), ipae.load, "not an ipae model file")  # AttributeError
    refuses(model("model.json", lambda r: r | {"metadata": 5}), ipae.load, "the metadata is not a JSON object")  # TypeError
    deep = {"model.json": b"[" * 100_000 + b"]" * 100_000}
    refuses(lambda folder: _write(folder, {**seeds.state, **deep}), ipae.load, "not valid JSON")  # RecursionError
    refuses(model("model.json", lambda r: r | {"model": r["model"] | {"beta": 10**400}}), ipae.load, "not a valid model description")
    refuses(model("model.json", lambda r: _set(r, ["model", "architecture", "hidden"], [2**62])), ipae.load, "not a valid model")
    refuses(model("model.json", lambda r: _set(r, ["metadata", "fit"], [1])), merged_options_of, "fit options are not a table")
    refuses(model("training.json", lambda r: r | {"optimizer": r["optimizer"] | {"state": []}}), load_state, "optimizer must be")
    refuses(model("training.json", lambda r: _set(r, ["optimizer", "state", "x"], ["a"])), load_state, "parameter's number")
    refuses(model("training.json", lambda r: r | {"step": 2}), load_state, "the history is torch.float32 (3, 3), not floating point (2, 3)")
    nan = dict(seeds.state)
    length = int.from_bytes(nan["model.safetensors"][:8], "little")
    nan["model.safetensors"] = (
        nan["model.safetensors"][: 8 + length] + struct.pack("<f", math.nan) + nan["model.safetensors"][12 + length :]
    )
    refuses(lambda folder: _write(folder, nan), ipae.load, "holds NaN or infinite values")
    assert not failures, "\n".join(failures)
    record(
        "bad input",
        "the fuzzing's findings, one file each",
        tried=len(examples),
        outcome="refused with ipae's one-line error naming the file",
    )


def _set(value: dict, keys: list[str], new: object) -> dict:
    inner = value
    for key in keys[:-1]:
        inner = inner[key]
    inner[keys[-1]] = new
    return value


def merged_options_of(directory: Path) -> dict:
    return merged_options({"data": "x.npy"}, resume=directory)


def options_of_config(config: Path) -> tuple:
    """What `ipae fit --config` makes of a config before it loads the data."""
    return from_options(merged_options({}, config=config))


def model_of_config(config: Path) -> AutoEncoder:
    """The model `ipae fit --config` builds for samples of 3 features."""
    return build_model(from_options(merged_options({"data": "x.npy"}, config=config))[0], (3,))
