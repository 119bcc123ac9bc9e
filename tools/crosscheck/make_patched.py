#!/usr/bin/env python3
"""Make patched copies of localjax for the cross-check (never touches the original).

  python make_patched.py --src localjax --dst SCRATCH/lj_f64 --f64
  python make_patched.py --src localjax --dst SCRATCH/lj_unbiased --unbiased-bn
  python make_patched.py --src localjax --dst SCRATCH/lj_f64_unbiased --f64 --unbiased-bn
  python make_patched.py --src localjax --dst SCRATCH/lj_torchclamp --torch-clamp

--f64          every `jnp.float32` in the package (all of it but `data/`, the input decoding
               the cross-check does not use) -> `jnp.float64`: the float32 casts of losses,
               logits, metrics and the per-block step would otherwise round a float64 run.
               Used only with jax_enable_x64 for the float64 side-by-side.
--unbiased-bn  every BatchNorm of `blocks.py` (`nn.BatchNorm(`) becomes
               `torch_defaults.TorchBatchNorm(` (unbiased_running_var=True by default):
               the running variance then averages the unbiased batch variance (n/(n-1)), as
               PyTorch does; the normalisation itself is unchanged. Same variables. A
               no-op where blocks.py builds TorchBatchNorm itself (the current localjax).
--torch-clamp  similarity matrix clip with PyTorch clamp's gradient (1 at the bounds).

The copy is <dst>/localjax; put <dst> first on sys.path (equiv.py --localjax-path <dst>).
The patches assert that the text they replace is there, so a layout change of localjax
stops this script with a message instead of producing an unpatched copy.
"""

import argparse
import os
import re
import shutil

CLIP_OLD = "    return jnp.clip(zn @ zn.T, -1.0, 1.0)\n"
CLIP_NEW = """    return _torch_clamp(zn @ zn.T)  # EQUIV PATCH


@jax.custom_jvp
def _torch_clamp(x):
    return jnp.clip(x, -1.0, 1.0)


@_torch_clamp.defjvp
def _torch_clamp_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    # PyTorch clamp: gradient passes where -1 <= x <= 1 (bounds included)
    return _torch_clamp(x), jnp.where((x >= -1.0) & (x <= 1.0), t, jnp.zeros_like(t))
"""
# the files the float64 patch must reach (the model, its losses and the train step)
F64_REQUIRED = (
    "heads.py",
    "losses.py",
    "network.py",
    "objective.py",
    "torch_defaults.py",
    os.path.join("training", "steps.py"),
)
F64_SKIP_DIRS = ("data",)


def patch_f64(out):
    patched = []
    for root, dirs, files in os.walk(out):
        rel_root = os.path.relpath(root, out)
        if rel_root.split(os.sep)[0] in F64_SKIP_DIRS:
            continue
        for f in files:
            if not f.endswith(".py"):
                continue
            p = os.path.join(root, f)
            s = open(p, encoding="utf-8").read()
            t = re.sub(r"jnp\.float32", "jnp.float64", s)
            if t != s:
                open(p, "w", encoding="utf-8").write(t)
                patched.append(os.path.normpath(os.path.join(rel_root, f)))
    for f in F64_REQUIRED:
        p = os.path.join(out, f)
        if not os.path.exists(p):
            raise SystemExit(f"--f64: {f} is not in the localjax copy (layout changed?)")
        if "jnp.float32" in open(p, encoding="utf-8").read():
            raise SystemExit(f"--f64: {f} still has jnp.float32")
    return patched


def patch_unbiased_bn(out):
    p = os.path.join(out, "blocks.py")
    s = open(p, encoding="utf-8").read()
    n = s.count("nn.BatchNorm(")
    if n == 0 and "TorchBatchNorm(" in s:
        return 0  # the blocks use TorchBatchNorm already (unbiased by default)
    if n == 0:
        raise SystemExit("--unbiased-bn: no nn.BatchNorm( in blocks.py (layout changed?)")
    s = s.replace("nn.BatchNorm(", "TorchBatchNorm(")
    s = s.replace(") -> nn.BatchNorm:", ") -> TorchBatchNorm:")
    imp = "from localjax.torch_defaults import ("
    if imp not in s:
        raise SystemExit("--unbiased-bn: blocks.py no longer imports from torch_defaults")
    s = s.replace(imp, "from localjax.torch_defaults import TorchBatchNorm  # EQUIV PATCH\n" + imp, 1)
    open(p, "w", encoding="utf-8").write(s)
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", required=True, help="the localjax package folder")
    ap.add_argument("--dst", required=True)
    ap.add_argument("--f64", action="store_true")
    ap.add_argument("--unbiased-bn", action="store_true")
    ap.add_argument("--torch-clamp", action="store_true")
    a = ap.parse_args()
    if not os.path.exists(os.path.join(a.src, "__init__.py")):
        raise SystemExit(f"--src {a.src} is not a package folder (expected .../localjax)")
    out = os.path.join(a.dst, "localjax")
    if os.path.exists(out):
        shutil.rmtree(out)
    shutil.copytree(a.src, out, ignore=shutil.ignore_patterns("__pycache__"))
    if a.f64:
        print("f64: patched", " ".join(sorted(patch_f64(out))))
    if a.unbiased_bn:
        n = patch_unbiased_bn(out)
        print("unbiased-bn: %s" % ("%d BatchNorm calls in blocks.py" % n if n else
                                   "blocks.py uses TorchBatchNorm already, nothing to patch"))
    if a.torch_clamp:
        p = os.path.join(out, "losses.py")
        s = open(p, encoding="utf-8").read()
        if s.count(CLIP_OLD) != 1:
            raise SystemExit("--torch-clamp: losses.py clip line changed")
        open(p, "w", encoding="utf-8").write(s.replace(CLIP_OLD, CLIP_NEW))
    print("patched copy in", out)


if __name__ == "__main__":
    main()
