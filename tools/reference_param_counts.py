#!/usr/bin/env python3
"""Parameter counts of the reference's ResNets and Wide ResNets (and, under
`--no-batch-norm`, of its MLP and vgg8b too), from its own PyTorch classes, as the rows of
tests/data/reference_param_counts.tsv.

    python tools/reference_param_counts.py PATH/TO/train.py > tests/data/reference_param_counts.tsv
    python tools/reference_param_counts.py PATH/TO/train.py --check-forward resnet18 wresnet16-4

Needs PyTorch (CPU is enough) and the reference's train.py (anokland/local-loss); the
reference code is not part of this repository. Only the definitions the models need are
executed from that file (its classes, the VGG `cfg` table and `similarity_matrix`,
`count_parameters`); its argparse defaults are read from the `parser.add_argument` calls,
and its model table (the `args.model == ...` chain, and its `args.model.startswith(...)`
branch for the VGGs) gives each name's constructor call. Its module-level code (datasets,
training) never runs.

Counted per model name, `pre_act` (`PRE_ACT_MODELS`), `no_batch_norm` and K in {10, 100},
input 32×32×3, the reference's defaults otherwise (predsim, dim_in_decoder 4096, feat_mult
1, Adam; the MLP and the VGG's classifier: num_layers 1, num_hidden 1024). Every ResNet and
Wide ResNet is counted with BatchNorm; `NO_BATCH_NORM_MODELS` (one model of each unit kind,
`pre_act` included, and the MLP and vgg8b) also with `--no-batch-norm`, and the MLP and
vgg8b with BatchNorm as well (`EXTRA_MODELS`):

  ref_all_local     every parameter of the local-learning model (nn.Module.parameters)
  ref_heads         the local heads: decoder_y, conv_loss, proj_y, decoder_x
  ref_loss_bn       the BatchNorm `bn` of blocks without post-activation (pre_act=True
                    or post_act=False), which the reference uses for the local loss only
  ref_frozen        parameters that no optimizer of the reference holds in local
                    learning (its global optimizer gets `model.parameters()`, which is
                    the output layer alone; each block and each projection shortcut has
                    its own): the Wide ResNet's final `bn1` weight and bias stay 1 and 0
  ref_backprop_all  `count_parameters` of the backprop model (every parameter)
  ref_backprop_unused  backprop parameters no gradient reaches after one forward and
                    backward pass (the stem's `bn` of a block without post-activation,
                    which the reference builds but never applies)

and the three numbers localjax's `count_params` must give:

  inference = ref_all_local - ref_heads - ref_loss_bn - ref_frozen
  total     = ref_all_local - ref_frozen
  backprop  = ref_backprop_all - ref_backprop_unused
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import math
import sys
import types

KEEP = {
    "LinearFAFunction",
    "LinearFA",
    "LocalLossBlockLinear",
    "LocalLossBlockConv",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "wide_basic",
    "Wide_ResNet",
    "Net",
    "VGGn",
    "count_parameters",
    "to_one_hot",
    "similarity_matrix",
}
KEEP_ASSIGNMENTS = {"cfg"}  # the VGG table, read by VGGn
HEAD_MODULES = ("decoder_y", "conv_loss", "linear_loss", "proj_y", "decoder_x")
# `--pre-act` rows: it changes BasicBlock units and the stem; of the Bottleneck nets
# (where it changes the stem only) resnet50 stands for the others
PRE_ACT_MODELS = ("resnet18", "resnet34", "resnet50")
# `--no-batch-norm` rows: dense and VGG blocks, BasicBlock (also pre-activation),
# Bottleneck, wide_basic and its adapted variant
NO_BATCH_NORM_MODELS = ("mlp", "vgg8b", "resnet18", "resnet50", "wresnet16-4", "wresnet16-4a")
# counted beside the residual models, with and without BatchNorm
EXTRA_MODELS = ("mlp", "vgg8b")
INPUT_DIM, INPUT_CH = 32, 3
COLUMNS = [
    "model",
    "pre_act",
    "no_batch_norm",
    "num_classes",
    "inference",
    "total",
    "backprop",
    "ref_all_local",
    "ref_heads",
    "ref_loss_bn",
    "ref_frozen",
    "ref_backprop_all",
    "ref_backprop_unused",
]


def _literal(node):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return None


def _defaults(tree) -> dict:
    """{dest: default} of the reference's `parser.add_argument` calls."""
    out = {}
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
            and node.args
        ):
            continue
        flag = _literal(node.args[0])
        if not (isinstance(flag, str) and flag.startswith("--")):
            continue
        kw = {k.arg: k.value for k in node.keywords}
        if "default" in kw:
            value = _literal(kw["default"])
        else:
            value = False if _literal(kw.get("action")) == "store_true" else None
        out[flag[2:].replace("-", "_")] = value
    return out


def _model_table(tree) -> dict[str, ast.expr]:
    """{name: constructor expression} from the `if args.model == 'name': model = ...`
    chain; a `args.model.startswith('prefix')` branch is recorded as `prefix*`."""
    table = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.If):
            continue
        test = node.test
        body = node.body[0] if node.body else None
        assigns_model = isinstance(body, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "model" for t in body.targets
        )
        if (
            isinstance(test, ast.Call)
            and isinstance(test.func, ast.Attribute)
            and test.func.attr == "startswith"
            and isinstance(test.func.value, ast.Attribute)
            and test.func.value.attr == "model"
            and len(test.args) == 1
            and isinstance(_literal(test.args[0]), str)
            and assigns_model
        ):
            table[_literal(test.args[0]) + "*"] = body.value
            continue
        if (
            isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Attribute)
            and test.left.attr == "model"
            and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)
        ):
            name = _literal(test.comparators[0])
            if isinstance(name, str) and assigns_model:
                table[name] = body.value
    return table


def load(train_py: str):
    """The reference's definitions, defaults and model table."""
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F  # noqa: N812
    import torch.optim as optim

    with open(train_py, encoding="utf-8") as f:
        src = f.read()
    tree = ast.parse(src, filename=train_py)
    nodes = [
        n
        for n in tree.body
        if (isinstance(n, ast.ClassDef | ast.FunctionDef) and n.name in KEEP)
        or (
            isinstance(n, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id in KEEP_ASSIGNMENTS for t in n.targets)
        )
    ]
    missing = (KEEP | KEEP_ASSIGNMENTS) - {
        getattr(n, "name", None) or n.targets[0].id for n in nodes
    }
    if missing:
        raise SystemExit(f"{train_py} lacks definitions: {sorted(missing)}")
    args = types.SimpleNamespace(**_defaults(tree))
    args.cuda = False
    ns = dict(
        torch=torch, nn=nn, F=F, optim=optim, math=math, np=np, args=args, __name__="reference"
    )
    exec(compile(ast.Module(body=nodes, type_ignores=[]), train_py, "exec"), ns)
    return ns, args, _model_table(tree)


def _constructor(table, name) -> ast.expr:
    """The model table's expression for `name` (exact, else its `prefix*` branch)."""
    if name in table:
        return table[name]
    for key, expr in table.items():
        if key.endswith("*") and name.startswith(key[:-1]):
            return expr
    raise SystemExit(f"the reference's model table has no {name!r}")


def build(ns, table, name, num_classes):
    # the reference's classes read these as globals of train.py (VGGn: num_classes,
    # args.model)
    ns["num_classes"] = num_classes
    ns["args"].model = name
    env = dict(ns, input_ch=INPUT_CH, input_dim=INPUT_DIM)
    with contextlib.redirect_stdout(sys.stderr):  # Wide_ResNet prints its name
        expr = _constructor(table, name)
        return eval(compile(ast.Expression(expr), "<model table>", "eval"), env)


def numel(params) -> int:
    return sum(p.numel() for p in params)


def count(ns, args, table, name, pre_act, num_classes, no_batch_norm=False) -> dict:
    import torch
    import torch.nn as nn

    conv_cls = ns["LocalLossBlockConv"]
    blocks = (conv_cls, ns["LocalLossBlockLinear"])
    args.pre_act = pre_act
    args.no_batch_norm = no_batch_norm
    args.backprop = False
    model = build(ns, table, name, num_classes)
    all_params = list(nn.Module.parameters(model))
    heads, loss_bn = [], []
    for m in model.modules():
        if isinstance(m, blocks):
            for attr in HEAD_MODULES:
                if hasattr(m, attr):
                    heads += list(getattr(m, attr).parameters())
        if isinstance(m, conv_cls) and not m.post_act and hasattr(m, "bn"):
            loss_bn += list(m.bn.parameters())
    # what the reference's optimizers hold: the global one gets model.parameters()
    held = {id(p) for p in model.parameters()}
    for m in model.modules():
        opt = getattr(m, "optimizer", None)
        if opt is not None:
            held |= {id(p) for g in opt.param_groups for p in g["params"]}
    frozen = [p for p in all_params if id(p) not in held]
    row = dict(
        ref_all_local=numel(all_params),
        ref_heads=numel(heads),
        ref_loss_bn=numel(loss_bn),
        ref_frozen=numel(frozen),
    )
    del model

    args.backprop = True
    model = build(ns, table, name, num_classes)
    model.train()
    row["ref_backprop_all"] = ns["count_parameters"](model)
    x = torch.randn(2, INPUT_CH, INPUT_DIM, INPUT_DIM)
    y = torch.tensor([0, 1])
    out, _ = model(x, y, ns["to_one_hot"](y, num_classes))
    out.sum().backward()
    row["ref_backprop_unused"] = numel(p for p in nn.Module.parameters(model) if p.grad is None)
    args.backprop = args.no_batch_norm = False
    del model

    row["inference"] = (
        row["ref_all_local"] - row["ref_heads"] - row["ref_loss_bn"] - row["ref_frozen"]
    )
    row["total"] = row["ref_all_local"] - row["ref_frozen"]
    row["backprop"] = row["ref_backprop_all"] - row["ref_backprop_unused"]
    return dict(
        model=name,
        pre_act=int(pre_act),
        no_batch_norm=int(no_batch_norm),
        num_classes=num_classes,
        **row,
    )


def check_forward(ns, args, table, name, pre_act) -> str:
    """One local-learning training forward (batch 4) of the reference: 'ok' or the error."""
    import torch

    args.pre_act, args.backprop = pre_act, False
    model = build(ns, table, name, 10)
    model.train()
    y = torch.tensor([0, 1, 2, 3])
    try:
        model(torch.randn(4, INPUT_CH, INPUT_DIM, INPUT_DIM), y, ns["to_one_hot"](y, 10))
    except Exception as e:  # noqa: BLE001 -- reported, not handled
        return f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return "ok"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train_py", help="the reference's train.py")
    parser.add_argument("--models", nargs="*", help="names (default: every resnet/wresnet)")
    parser.add_argument(
        "--check-forward",
        nargs="*",
        metavar="MODEL",
        help="only run one local-learning forward of these and report",
    )
    a = parser.parse_args(argv)
    import torch

    torch.manual_seed(0)
    ns, args, table = load(a.train_py)
    if a.check_forward is not None:
        for name in a.check_forward:
            for pre_act in (False, True) if name.startswith("resnet") else (False,):
                result = check_forward(ns, args, table, name, pre_act)
                print(f"{name}\tpre_act={int(pre_act)}\t{result}")
        return
    names = a.models or [n for n in table if n.startswith(("resnet", "wresnet"))]
    print("# Parameter counts of the reference's models, from its own PyTorch classes.")
    print(
        f"# Made by: python tools/reference_param_counts.py {a.train_py} "
        f"(torch {torch.__version__}, {datetime.date.today().isoformat()})."
    )
    print("# Input 32x32x3; the reference's defaults otherwise (predsim, dim_in_decoder 4096,")
    print("# feat_mult 1; mlp and the VGG classifier: num_layers 1, num_hidden 1024).")
    print("# inference/total: localjax count_params of the local-learning model; backprop: of")
    print("# the backprop model. See the script's docstring for each column.")
    print("\t".join(COLUMNS))
    cases = [(name, False) for name in names]
    if not a.models:
        cases = [(n, False) for n in EXTRA_MODELS] + cases
        cases += [(n, True) for n in NO_BATCH_NORM_MODELS]
    for name, no_bn in cases:
        for pre_act in (False, True) if name in PRE_ACT_MODELS else (False,):
            if no_bn and pre_act and name != "resnet18":
                continue  # one pre-activation no-batch-norm model: resnet18
            for k in (10, 100):
                row = count(ns, args, table, name, pre_act, k, no_bn)
                print("\t".join(str(row[c]) for c in COLUMNS), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
