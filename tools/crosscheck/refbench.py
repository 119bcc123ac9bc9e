#!/usr/bin/env python3
"""refbench: measure the official PyTorch "local error signals" code on CPU.

The reference file (train.py of Nøkland & Eidnes 2019) is NOT embedded here.
It is read at run time from --train-py, parsed with `ast`, and only the model
definitions are executed (LinearFAFunction, LinearFA, LocalLossBlockLinear,
LocalLossBlockConv, Net, cfg, VGGn, to_one_hot, similarity_matrix,
count_parameters).  The argparse defaults are also read from train.py's
`parser.add_argument(...)` calls, so `args` carries the reference defaults;
flags given here override them.  train.py's module-level code (argparse at
import, torchvision downloads, training loop) is never executed.

Data: Fashion-MNIST IDX files (gzip) are read with numpy; the training
transform of the reference for FashionMNIST is reproduced: RandomCrop(28,
padding=2) with zero fill, RandomHorizontalFlip(0.5), ToTensor, Normalize
(0.286, 0.353).

Sub-commands
  bench   time train steps (and optionally eval) of one config -> JSON
  suite   run `bench` for several presets, each in its own subprocess
          (so peak RSS is per config) -> JSON + markdown table
  train   train for N epochs on the full train set, test after each epoch
  flops   analytic FLOP count per training sample (shapes taken from the
          instantiated reference model via forward hooks)

Get the reference file out of a git snapshot first, e.g.
  git -C <snapshot>/.git show HEAD:train.py > <scratch>/train.py

Examples
  python refbench.py --train-py <scratch>/train.py --data-dir <fmnist dir> \
      suite --presets a,b,c,d,e,f --workdir <scratch> --out <scratch>/suite.json
  python refbench.py --train-py <scratch>/train.py bench --preset a --eval-reps 20
  python refbench.py --train-py <scratch>/train.py bench --model resnet18 --dataset cifar10 \
      --fix-basicblock --warmup 1 --steps 5 --slow-threshold-s 0   # CIFAR shapes, random images
  python refbench.py --train-py <scratch>/train.py train --preset a --epochs 5 \
      --json <scratch>/train_a.json
  python refbench.py --train-py <scratch>/train.py flops --presets a,e

Measurement hygiene: bench/train record their own CPU time and the machine's
busy time (`others_cpu_s`, `others_share`), so a run that shared the cores
with another process can be recognised; `--quiet-wait S` waits up to S
seconds for the machine to go idle before timing.
"""
import argparse
import ast
import gzip
import hashlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import types

# --------------------------------------------------------------------------
# Presets (FashionMNIST recipes of the reference run_experiments.sh; the
# nonlinearity follows those recipes: leakyrelu for sim/predsim, relu for
# pred/backprop).
# --------------------------------------------------------------------------
PRESETS = {
    'a': dict(model='mlp', num_layers=3, num_hidden=1024, loss_sup='predsim',
              backprop=False, nonlin='leakyrelu', dropout=0.025, lr=5e-4),
    'b': dict(model='mlp', num_layers=3, num_hidden=1024, loss_sup='predsim',
              backprop=True, nonlin='relu', dropout=0.025, lr=5e-4),
    'c': dict(model='mlp', num_layers=3, num_hidden=1024, loss_sup='pred',
              backprop=False, nonlin='relu', dropout=0.025, lr=5e-4),
    'd': dict(model='mlp', num_layers=3, num_hidden=1024, loss_sup='sim',
              backprop=False, nonlin='leakyrelu', dropout=0.025, lr=5e-4),
    'e': dict(model='vgg8b', loss_sup='predsim', backprop=False,
              nonlin='leakyrelu', dropout=0.1, dim_in_decoder=1024, lr=5e-4),
    'f': dict(model='vgg8b', loss_sup='predsim', backprop=True,
              nonlin='relu', dropout=0.1, lr=5e-4),
}
PRESET_DESC = {
    'a': 'mlp 3x1024 predsim leakyrelu drop0.025',
    'b': 'mlp 3x1024 backprop relu drop0.025',
    'c': 'mlp 3x1024 pred relu drop0.025',
    'd': 'mlp 3x1024 sim leakyrelu drop0.025',
    'e': 'vgg8b predsim leakyrelu drop0.1 dimdec1024',
    'f': 'vgg8b backprop relu drop0.1',
}

KEEP = ['LinearFAFunction', 'LinearFA', 'LocalLossBlockLinear',
        'LocalLossBlockConv', 'Net', 'cfg', 'VGGn', 'to_one_hot',
        'similarity_matrix', 'count_parameters',
        'BasicBlock', 'Bottleneck', 'ResNet', 'wide_basic', 'Wide_ResNet']
# the reference main script's ResNet table: name -> (unit class, units per stage)
RESNETS = {'resnet18': ('BasicBlock', [2, 2, 2, 2]), 'resnet34': ('BasicBlock', [3, 4, 6, 3]),
           'resnet50': ('Bottleneck', [3, 4, 6, 3]), 'resnet101': ('Bottleneck', [3, 4, 23, 3]),
           'resnet152': ('Bottleneck', [3, 8, 36, 3])}

MEAN, STD = 0.286, 0.353          # reference FashionMNIST normalisation
NUM_CLASSES, INPUT_DIM, INPUT_CH = 10, 28, 1


# --------------------------------------------------------------------------
# Loading the reference definitions
# --------------------------------------------------------------------------
def _literal(node):
    try:
        return ast.literal_eval(node)
    except Exception:
        return None


def reference_defaults(tree):
    """Return {dest: default} from parser.add_argument(...) calls."""
    out = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == 'add_argument' and node.args):
            continue
        flag = _literal(node.args[0])
        if not isinstance(flag, str) or not flag.startswith('--'):
            continue
        dest = flag[2:].replace('-', '_')
        kw = {k.arg: k.value for k in node.keywords}
        if 'default' in kw:
            out[dest] = _literal(kw['default'])
        elif 'action' in kw and _literal(kw['action']) == 'store_true':
            out[dest] = False
        else:
            out[dest] = None
    return out


def load_reference(train_py, overrides):
    """Parse train.py, exec only the needed definitions. Returns (ns, args)."""
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torch.optim as optim

    src = open(train_py, 'r', encoding='utf-8').read()
    tree = ast.parse(src, filename=train_py)
    defaults = reference_defaults(tree)
    args = types.SimpleNamespace(**defaults)
    for k, v in overrides.items():
        if v is not None:
            setattr(args, k, v)
    args.cuda = False                  # CPU only, as train.py would set it
    args.dataset = 'FashionMNIST'

    nodes, found = [], set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name in KEEP:
            nodes.append(node); found.add(node.name)
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id in KEEP for t in node.targets):
            nodes.append(node)
            found.update(t.id for t in node.targets if isinstance(t, ast.Name))
    missing = set(KEEP) - found
    if missing:
        raise SystemExit('train.py lacks definitions: %s' % sorted(missing))
    code = compile(ast.Module(body=nodes, type_ignores=[]), train_py, 'exec')
    ns = dict(torch=torch, nn=nn, F=F, optim=optim, math=math, np=np,
              args=args, num_classes=NUM_CLASSES, __name__='refmodel')
    exec(code, ns)
    ns['_sha256'] = hashlib.sha256(src.encode('utf-8')).hexdigest()
    return ns, args


def build(ns, args, input_dim=INPUT_DIM, fix=None, input_ch=INPUT_CH):
    """Model + optimizer exactly as the reference main script builds them.

    Models: mlp, vgg*, resnet18..resnet152 (the script's table), wresnet<depth>-<k>[a]
    (the script's table names, and any other depth/width of its Wide_ResNet class).
    `fix(model)`, if given, runs after the model is built and before its learning rates
    are set (`fix_basicblock_dim_out`). `input_dim`, `input_ch`: 28, 1 (Fashion-MNIST) or
    32, 3 (CIFAR), as the script sets them per dataset."""
    import re
    import torch.optim as optim
    wide = re.fullmatch(r'wresnet(\d+)-(\d+)(a?)', args.model)
    if args.model == 'mlp':
        model = ns['Net'](args.num_layers, args.num_hidden, input_dim, input_ch, NUM_CLASSES)
    elif args.model.startswith('vgg'):
        model = ns['VGGn'](args.model, input_dim, input_ch, NUM_CLASSES, args.feat_mult)
    elif args.model in RESNETS:
        unit, layers = RESNETS[args.model]
        model = ns['ResNet'](ns[unit], layers, NUM_CLASSES, input_ch, args.feat_mult, input_dim)
    elif wide:
        model = ns['Wide_ResNet'](int(wide[1]), int(wide[2]), args.dropout, NUM_CLASSES,
                                  input_ch, input_dim, bool(wide[3]))
    else:
        raise SystemExit('unsupported model %r (mlp, vgg*, resnet*, wresnet*)' % args.model)
    if fix is not None:
        fix(model)
    if args.optim == 'sgd':
        opt = optim.SGD(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                        momentum=args.momentum)
    else:
        opt = optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                         amsgrad=args.optim == 'amsgrad')
    model.set_learning_rate(args.lr)
    return model, opt


def fix_basicblock_dim_out(ns, args, model, input_dim):
    """Rebuild the convolutions of every reference BasicBlock whose `dim_out` is not its
    real output size (the reference passes the unit's input size to both), with the
    reference's own LocalLossBlockConv and the constructor arguments BasicBlock uses, but
    the real size. Without it a local-learning pred/predsim forward of the reference's
    resnet18/34 stops at the first strided unit (its decoder is sized for the input map).
    Returns what it changed (docs/crosscheck.md, "Reference defects")."""
    fixed = []
    d = input_dim  # map size entering the unit (the stem is a 3x3, stride 1, padding 1 conv)
    for lname in ('layer1', 'layer2', 'layer3', 'layer4'):
        for u, blk in enumerate(getattr(model, lname)):
            if not isinstance(blk, ns['BasicBlock']):
                return fixed  # Bottleneck units give their convolutions the right sizes
            d_out = (d - 1) // blk.stride + 1  # 3x3 conv, padding 1
            if blk.input_dim != d_out:
                act = dict(bias=False, pre_act=args.pre_act, post_act=not args.pre_act)
                c1, c2 = blk.conv1, blk.conv2
                blk.conv1 = ns['LocalLossBlockConv'](c1.ch_in, c1.ch_out, 3, blk.stride, 1,
                                                     NUM_CLASSES, d_out, **act)
                blk.conv2 = ns['LocalLossBlockConv'](c2.ch_in, c2.ch_out, 3, 1, 1,
                                                     NUM_CLASSES, d_out, **act)
                fixed.append('%s.%d: dim_out %d -> %d' % (lname, u, blk.input_dim, d_out))
            d = d_out
    return fixed


def n_params_total(model):
    import torch.nn as nn
    return sum(p.numel() for p in nn.Module.parameters(model))


HEAD_NAMES = ('linear_loss', 'conv_loss', 'decoder_y', 'decoder_x', 'proj_y')


def n_params_inference(model):
    """Parameters used at inference (excludes the local-loss heads)."""
    import torch.nn as nn
    return sum(p.numel() for n, p in nn.Module.named_parameters(model)
               if not any(('.' + h + '.') in ('.' + n) for h in HEAD_NAMES))


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------
def read_idx(path, limit=None):
    """Read an IDX(.gz) file; with `limit` only that many items are read."""
    import numpy as np
    op = gzip.open if path.endswith('.gz') else open
    with op(path, 'rb') as f:
        magic = f.read(4)
        ndim = magic[3]
        dims = [int.from_bytes(f.read(4), 'big') for _ in range(ndim)]
        if limit is not None:
            dims[0] = min(dims[0], limit)
        n = int(np.prod(dims))
        buf = f.read(n)
    return np.frombuffer(buf, dtype=np.uint8).reshape(dims)


def load_split(data_dir, split, limit=None):
    pre = 'train' if split == 'train' else 't10k'
    x = read_idx(os.path.join(data_dir, pre + '-images-idx3-ubyte.gz'), limit)
    y = read_idx(os.path.join(data_dir, pre + '-labels-idx1-ubyte.gz'), limit)
    return x, y


class Augmenter:
    """RandomCrop(28, padding=2, fill=0) + RandomHorizontalFlip + Normalize."""

    def __init__(self, images_u8, rng, pad=2):
        import numpy as np
        self.np = np
        self.pad = pad
        self.padded = np.pad(images_u8, ((0, 0), (pad, pad), (pad, pad)))
        self.rng = rng
        self.ar = np.arange(images_u8.shape[1])

    def batch(self, idx):
        np = self.np
        b = len(idx)
        oi = self.rng.integers(0, 2 * self.pad + 1, size=b)
        oj = self.rng.integers(0, 2 * self.pad + 1, size=b)
        rows = oi[:, None] + self.ar[None, :]
        cols = oj[:, None] + self.ar[None, :]
        flip = self.rng.random(b) < 0.5
        cols = np.where(flip[:, None], cols[:, ::-1], cols)
        x = self.padded[np.asarray(idx)[:, None, None], rows[:, :, None], cols[:, None, :]]
        x = (x.astype(np.float32) * (1.0 / 255.0) - MEAN) / STD
        return x[:, None, :, :]


def normalize(images_u8):
    import numpy as np
    x = (images_u8.astype(np.float32) * (1.0 / 255.0) - MEAN) / STD
    return x[:, None, :, :]


# --------------------------------------------------------------------------
# Reference train step / eval
# --------------------------------------------------------------------------
def train_step(ns, args, model, opt, data, target):
    """Body of the reference train() loop for one batch; returns
    (output logits, the model's summed local loss, the output loss, correct count)."""
    F = ns['torch'].nn.functional
    target_onehot = ns['to_one_hot'](target, NUM_CLASSES)
    opt.zero_grad()
    model.optim_zero_grad()
    output, loss_local = model(data, target, target_onehot)
    loss = F.cross_entropy(output, target)
    if args.loss_sup == 'predsim' and not args.backprop:
        loss *= (1 - args.beta)
    loss_global = loss.item()
    loss.backward()
    opt.step()
    if args.no_detach:
        model.optim_step()
    correct = int(output.max(1)[1].eq(target).sum())
    return output, loss_local, loss_global, correct


def rss_mib():
    out = {}
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(('VmRSS:', 'VmHWM:')):
                k, v = line.split(':')
                out[k] = int(v.split()[0]) / 1024.0
    return out


class CpuMeter:
    """Own CPU time (user/sys), page faults, and machine-wide busy time.

    `others_cpu_s` = machine busy time not spent by this process: a sign that
    something else shared the 2 cores during the measurement.
    """

    HZ = os.sysconf('SC_CLK_TCK')

    @staticmethod
    def _stat():
        with open('/proc/stat') as f:
            v = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal
        busy = v[0] + v[1] + v[2] + v[5] + v[6]
        return busy, v[7]

    def __init__(self):
        self.r0 = resource.getrusage(resource.RUSAGE_SELF)
        self.s0 = self._stat()
        self.t0 = time.perf_counter()

    def read(self):
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        s1 = self._stat()
        wall = time.perf_counter() - self.t0
        user = r1.ru_utime - self.r0.ru_utime
        sys_ = r1.ru_stime - self.r0.ru_stime
        busy = (s1[0] - self.s0[0]) / self.HZ
        steal = (s1[1] - self.s0[1]) / self.HZ
        return dict(wall_s=wall, self_user_s=user, self_sys_s=sys_,
                    self_cpu_util=(user + sys_) / wall if wall > 0 else 0.0,
                    minor_faults=r1.ru_minflt - self.r0.ru_minflt,
                    machine_busy_s=busy, others_cpu_s=max(0.0, busy - user - sys_),
                    steal_s=steal)


def wait_quiet(max_wait_s, busy_frac=0.10, window_s=3.0):
    """Wait until the machine is idle (other processes < busy_frac of all CPUs
    over window_s), at most max_wait_s.  Returns seconds waited (or -1 if the
    machine never became quiet)."""
    if not max_wait_s:
        return 0.0
    ncpu = os.cpu_count() or 1
    t0 = time.perf_counter()
    while True:
        b0, _ = CpuMeter._stat()
        time.sleep(window_s)
        b1, _ = CpuMeter._stat()
        frac = (b1 - b0) / CpuMeter.HZ / (window_s * ncpu)
        if frac < busy_frac:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > max_wait_s:
            return -1.0


def contamination(cpu):
    """Share of the machine that other processes used during a measurement."""
    ncpu = os.cpu_count() or 1
    return cpu['others_cpu_s'] / (cpu['wall_s'] * ncpu) if cpu['wall_s'] > 0 else 0.0


def set_threads(n):
    import torch
    torch.set_num_threads(n)
    return torch.get_num_threads()


def model_overrides(a):
    if a.preset:
        o = dict(PRESETS[a.preset])
    else:
        o = {}
    for k in ['model', 'loss_sup', 'num_layers', 'num_hidden', 'dim_in_decoder',
              'dropout', 'nonlin', 'lr', 'batch_size', 'feat_mult', 'beta', 'alpha',
              'optim', 'seed', 'target_proj_size']:
        v = getattr(a, k, None)
        if v is not None:
            o[k] = v
    for k in ['backprop', 'bio', 'no_print_stats', 'no_batch_norm', 'no_detach',
              'no_similarity_std']:
        v = getattr(a, k, None)
        if v:
            o[k] = True
    if getattr(a, 'local', False):
        o['backprop'] = False
    return o


def describe(args):
    keys = ['model', 'num_layers', 'num_hidden', 'loss_sup', 'backprop', 'bio', 'nonlin',
            'dropout', 'dim_in_decoder', 'feat_mult', 'lr', 'batch_size', 'beta',
            'alpha', 'optim', 'no_print_stats', 'no_detach', 'seed']
    return {k: getattr(args, k) for k in keys}


# --------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------
def cmd_bench(a):
    import numpy as np
    import torch
    threads = set_threads(a.threads)
    ns, args = load_reference(a.train_py, model_overrides(a))
    if a.dataset == 'cifar10':
        args.dataset = 'CIFAR10'
    torch.manual_seed(args.seed)
    B = args.batch_size
    rng = np.random.default_rng(args.seed)
    batches = []
    if a.dataset == 'cifar10':
        # CIFAR-10 shapes (3x32x32, 10 classes), random images: timing only; the batches
        # are made before timing, as the reference's DataLoader would hand them over
        input_dim, input_ch = 32, 3
        for i in range(min(a.warmup + a.steps, 8)):
            u8 = rng.integers(0, 256, (B, 3, 32, 32), dtype=np.uint8)
            xb = ((u8.astype(np.float32) / 255.0 - 0.5) / 0.25).astype(np.float32)
            batches.append((torch.from_numpy(xb),
                            torch.from_numpy(rng.integers(0, NUM_CLASSES, B).astype(np.int64))))
        aug_ms = None
    else:
        input_dim, input_ch = INPUT_DIM, INPUT_CH
        n_need = (a.warmup + a.steps) * B
        xtr, ytr = load_split(a.data_dir, 'train', limit=n_need)
        aug = Augmenter(xtr, rng)
        perm = rng.permutation(len(xtr))
        for i in range(a.warmup + a.steps):
            idx = perm[(i * B) % len(xtr):][:B]
            if len(idx) < B:
                idx = rng.choice(len(xtr), B, replace=False)
            xb = aug.batch(idx)
            batches.append((torch.from_numpy(xb), torch.from_numpy(ytr[idx].astype(np.int64))))
        # augmentation cost (vectorised numpy) per batch, measured separately
        t0 = time.perf_counter()
        for i in range(20):
            aug.batch(perm[:B])
        aug_ms = (time.perf_counter() - t0) / 20 * 1e3

    ref_fixes = []

    def fix(model):
        if a.fix_basicblock:
            ref_fixes.extend(fix_basicblock_dim_out(ns, args, model, input_dim))

    model, opt = build(ns, args, input_dim=input_dim, fix=fix, input_ch=input_ch)
    model.train()
    rss_setup = rss_mib()
    waited = wait_quiet(a.quiet_wait)
    res = dict(config=describe(args), preset=a.preset, dataset=a.dataset,
               input_shape=[input_ch, input_dim, input_dim], ref_fixes=ref_fixes,
               desc=PRESET_DESC.get(a.preset, ''), threads=threads,
               torch=torch.__version__, train_py_sha256=ns['_sha256'],
               params_total=n_params_total(model),
               params_inference=n_params_inference(model),
               params_global=ns['count_parameters'](model),
               augment_ms_per_batch=aug_ms, rss_after_setup_mib=rss_setup,
               quiet_wait_s=waited)

    if a.flush_denormal:
        res['flush_denormal'] = bool(torch.set_flush_denormal(True))
    times, cpus = [], []
    n_warm, n_steps = a.warmup, a.steps
    i = 0
    meter = None
    while i < n_warm + n_steps:
        if i == n_warm:
            meter = CpuMeter()
        xb, yb = batches[i % len(batches)]
        c0 = time.process_time()
        t0 = time.perf_counter()
        train_step(ns, args, model, opt, xb, yb)
        dt = time.perf_counter() - t0
        dc = time.process_time() - c0
        if i == 0 and a.slow_threshold_s and dt > a.slow_threshold_s:
            # very slow config: shorten the run as the brief allows
            n_warm, n_steps = a.slow_warmup, a.slow_steps
            res['shortened'] = dict(first_step_s=dt, warmup=n_warm, steps=n_steps)
        if i >= n_warm:
            times.append(dt)
            cpus.append(dc)
        if a.verbose:
            print('step %d: %.1f ms wall, %.1f ms cpu' % (i, dt * 1e3, dc * 1e3),
                  file=sys.stderr, flush=True)
        i += 1
    res['cpu_during_timed_steps'] = meter.read()
    res['others_share'] = contamination(res['cpu_during_timed_steps'])
    res['step_ms_all'] = [round(t * 1e3, 2) for t in times]
    res['step_cpu_ms_all'] = [round(t * 1e3, 2) for t in cpus]
    ms = [t * 1e3 for t in times]
    med = statistics.median(ms)
    res.update(warmup=n_warm, steps=n_steps, batch=B,
               step_ms_median=med, step_ms_mean=statistics.mean(ms),
               step_ms_min=min(ms), step_ms_max=max(ms),
               step_ms_p90=sorted(ms)[int(0.9 * (len(ms) - 1))],
               samples_per_s=B / (med / 1e3))
    res['rss_after_train_mib'] = rss_mib()

    if a.eval_reps > 0 and a.dataset != 'fashion_mnist':
        raise SystemExit('--eval-reps times Fashion-MNIST test batches only')
    if a.eval_reps > 0:
        xte, yte = load_split(a.data_dir, 'test', limit=a.eval_batch)
        xe = torch.from_numpy(normalize(xte))
        ye = torch.from_numpy(yte.astype(np.int64))
        oh = ns['to_one_hot'](ye, NUM_CLASSES)
        model.eval()
        ev = {}
        saved = args.no_print_stats
        for label, nps in [('ref_default_with_local_heads', False),
                           ('no_print_stats_pure_forward', True)]:
            args.no_print_stats = nps
            et = []
            for r in range(a.eval_warmup + a.eval_reps):
                t0 = time.perf_counter()
                with torch.no_grad():
                    out, _ = model(xe, ye, oh)
                    _ = out.max(1)[1].eq(ye).sum().item()
                if r >= a.eval_warmup:
                    et.append((time.perf_counter() - t0) * 1e3)
            m = statistics.median(et)
            ev[label] = dict(batch=len(ye), reps=a.eval_reps, ms_median=m,
                             ms_min=min(et), samples_per_s=len(ye) / (m / 1e3))
        args.no_print_stats = saved
        res['eval'] = ev
    res['peak_rss_mib'] = rss_mib()['VmHWM']
    res['ru_maxrss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    js = json.dumps(res, indent=1)
    if a.json:
        with open(a.json, 'w') as f:
            f.write(js)
    print(js)


# --------------------------------------------------------------------------
# suite
# --------------------------------------------------------------------------
def cmd_suite(a):
    results = []
    for p in a.presets.split(','):
        is_mlp = PRESETS[p]['model'] == 'mlp'
        out = os.path.join(a.workdir, 'bench_%s.json' % p)
        cmd = [sys.executable, os.path.abspath(__file__), '--train-py', a.train_py,
               '--data-dir', a.data_dir, '--threads', str(a.threads), 'bench',
               '--preset', p, '--warmup', str(a.warmup), '--steps', str(a.steps),
               '--json', out, '--slow-threshold-s', str(a.slow_threshold_s),
               '--eval-reps', str(a.eval_reps if (is_mlp or a.eval_vgg) else 0),
               '--quiet-wait', str(a.quiet_wait)]
        if not is_mlp and a.eval_vgg:
            cmd += ['--eval-reps', '2', '--eval-warmup', '1']
        if a.verbose:
            cmd.append('--verbose')
        print('+', ' '.join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            results.append(json.load(f))
    with open(a.out, 'w') as f:
        json.dump(results, f, indent=1)
    print('| cfg | desc | steps | median ms/step | min ms | samples/s | peak RSS MiB | '
          'eval ms/1000 (heads / pure) | own CPU util | others CPU s / wall s |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for r in results:
        ev = r.get('eval')
        evs = ('%.1f / %.1f' % (ev['ref_default_with_local_heads']['ms_median'],
                                ev['no_print_stats_pure_forward']['ms_median'])) if ev else '-'
        c = r['cpu_during_timed_steps']
        print('| %s | %s | %d | %.1f | %.1f | %.0f | %.0f | %s | %.2f | %.1f / %.1f |' % (
            r['preset'], r['desc'], r['steps'], r['step_ms_median'], r['step_ms_min'],
            r['samples_per_s'], r['peak_rss_mib'], evs, c['self_cpu_util'],
            c['others_cpu_s'], c['wall_s']))


# --------------------------------------------------------------------------
# train (accuracy anchor)
# --------------------------------------------------------------------------
def cmd_train(a):
    import numpy as np
    import torch
    from bisect import bisect_right
    threads = set_threads(a.threads)
    ns, args = load_reference(a.train_py, model_overrides(a))
    torch.manual_seed(args.seed)
    B = args.batch_size
    xtr, ytr = load_split(a.data_dir, 'train', limit=a.train_limit)
    xte, yte = load_split(a.data_dir, 'test')
    ytr_t = torch.from_numpy(ytr.astype(np.int64))
    xe = torch.from_numpy(normalize(xte))
    ye = torch.from_numpy(yte.astype(np.int64))
    rng = np.random.default_rng(args.seed)
    aug = Augmenter(xtr, rng)
    model, opt = build(ns, args)
    blocks = [m for m in model.modules()
              if isinstance(m, (ns['LocalLossBlockLinear'], ns['LocalLossBlockConv']))]
    log = dict(config=describe(args), preset=a.preset, desc=PRESET_DESC.get(a.preset, ''),
               threads=threads, torch=torch.__version__, train_py_sha256=ns['_sha256'],
               params_total=n_params_total(model),
               params_inference=n_params_inference(model),
               params_global=ns['count_parameters'](model),
               n_train=len(ytr), n_test=len(yte), epochs=[])
    print(json.dumps({k: v for k, v in log.items() if k != 'epochs'}), flush=True)
    N = len(ytr)
    log['quiet_wait_s'] = wait_quiet(a.quiet_wait)
    for epoch in range(1, a.epochs + 1):
        lr = args.lr * args.lr_decay_fact ** bisect_right(args.lr_decay_milestones, epoch - 1)
        for g in opt.param_groups:
            g['lr'] = lr
        model.set_learning_rate(lr)
        model.train()
        if not args.no_print_stats:
            for m in blocks:
                m.clear_stats()
        t_data = t_step = 0.0
        correct = 0
        loss_local = loss_global = 0.0
        meter = CpuMeter()
        t_ep = time.perf_counter()
        perm = rng.permutation(N)
        for s in range(0, N, B):            # DataLoader(shuffle=True, drop_last=False)
            idx = perm[s:s + B]
            t0 = time.perf_counter()
            xb = torch.from_numpy(aug.batch(idx) if not a.no_augment else
                                  normalize(xtr[idx]))
            yb = ytr_t[idx]
            t1 = time.perf_counter()
            _, ll, lg, c = train_step(ns, args, model, opt, xb, yb)
            t2 = time.perf_counter()
            t_data += t1 - t0
            t_step += t2 - t1
            correct += c
            loss_local += ll * len(idx)
            loss_global += lg * len(idx)
        t_train = time.perf_counter() - t_ep
        cpu_train = meter.read()
        train_stats = '' if args.no_print_stats else ''.join(m.print_stats() for m in blocks)
        # test (reference test(): eval mode, local stats computed unless --no-print-stats)
        model.eval()
        if not args.no_print_stats:
            for m in blocks:
                m.clear_stats()
        t0 = time.perf_counter()
        tcorrect, tloss = 0, 0.0
        F = torch.nn.functional
        with torch.no_grad():
            for s in range(0, len(ye), a.test_batch):
                xb, yb = xe[s:s + a.test_batch], ye[s:s + a.test_batch]
                out, _ = model(xb, yb, ns['to_one_hot'](yb, NUM_CLASSES))
                tloss += F.cross_entropy(out, yb).item() * len(yb)
                tcorrect += int(out.max(1)[1].eq(yb).sum())
        t_test = time.perf_counter() - t0
        tloss /= len(ye)
        if args.loss_sup == 'predsim' and not args.backprop:
            tloss *= (1 - args.beta)
        test_stats = '' if args.no_print_stats else ''.join(m.print_stats() for m in blocks)
        ep = dict(epoch=epoch, lr=lr,
                  train_loss_local=loss_local / N, train_loss_global=loss_global / N,
                  train_error=100.0 - 100.0 * correct / N,
                  test_loss_global=tloss, test_error=100.0 - 100.0 * tcorrect / len(ye),
                  train_wall_s=t_train, train_data_s=t_data, train_step_s=t_step,
                  test_wall_s=t_test, rss=rss_mib(), cpu_train=cpu_train,
                  others_share=contamination(cpu_train),
                  train_layer_stats=train_stats, test_layer_stats=test_stats)
        log['epochs'].append(ep)
        print(json.dumps({k: v for k, v in ep.items() if not k.endswith('layer_stats')}),
              flush=True)
        if test_stats:
            print(test_stats, flush=True)
        if a.json:
            with open(a.json, 'w') as f:
                json.dump(log, f, indent=1)
    log['peak_rss_mib'] = rss_mib()['VmHWM']
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(log, f, indent=1)


# --------------------------------------------------------------------------
# flops
# --------------------------------------------------------------------------
def count_flops(ns, args, B):
    """Analytic FLOP count (2 per multiply-add) of one training step at batch B.

    Shapes are taken from the reference model itself: forward hooks on every
    nn.Linear / nn.Conv2d and a wrapper around similarity_matrix record what
    one train-mode forward does.  Returns a list of op records.
    """
    import torch
    import torch.nn as nn
    model, _ = build(ns, args)
    model.train()
    ops = []
    blocks = (ns['LocalLossBlockLinear'], ns['LocalLossBlockConv'])
    role_of = {}
    for bname, blk in model.named_modules():
        if isinstance(blk, blocks):
            for cname, child in blk.named_children():
                role_of[id(child)] = (bname, cname)
    name_of = {id(m): n for n, m in model.named_modules()}
    cur = {'block': '-'}

    def hook(mod, inp, out):
        x = inp[0]
        bname, role = role_of.get(id(mod), (name_of.get(id(mod), '?'), 'global'))
        if isinstance(mod, nn.Linear):
            macs = x.shape[0] * mod.in_features * mod.out_features
            shape = '%dx%d' % (mod.in_features, mod.out_features)
        else:
            k = mod.kernel_size[0] * mod.kernel_size[1]
            macs = out.numel() * mod.in_channels * k // mod.groups
            shape = '%d->%d k%d @%dx%d' % (mod.in_channels, mod.out_channels,
                                          mod.kernel_size[0], out.shape[2], out.shape[3])
        ops.append(dict(block=bname, role=role, kind=type(mod).__name__, shape=shape,
                        fwd=2 * macs, input_requires_grad=bool(x.requires_grad)))

    orig = ns['similarity_matrix']

    def sim_wrapped(x):
        R = orig(x)
        # the (B, d) operand that the reference multiplies with its transpose
        if x.dim() == 4 and not args.no_similarity_std and x.size(1) > 3 and x.size(2) > 1:
            d = x.size(1)
            extra = 4 * x.numel()          # std over spatial positions (elementwise)
        else:
            d = x.numel() // x.size(0)
            extra = 0
        b = x.size(0)
        ops.append(dict(block=cur['block'],
                        role='sim_matrix' if x.requires_grad else 'sim_matrix_target',
                        kind='matmul', shape='(%dx%d)(%dx%d)' % (b, d, d, b),
                        fwd=2 * b * b * d, elementwise=extra + 5 * b * d,
                        input_requires_grad=bool(x.requires_grad)))
        return R

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (nn.Linear, nn.Conv2d))]
    for bname, blk in model.named_modules():
        if isinstance(blk, blocks):
            hooks.append(blk.register_forward_pre_hook(
                lambda m, i, n=bname: cur.__setitem__('block', n)))
    ns['similarity_matrix'] = sim_wrapped
    try:
        x = torch.randn(B, INPUT_CH, INPUT_DIM, INPUT_DIM)
        y = torch.randint(0, NUM_CLASSES, (B,))
        # one real train-mode forward (local backward/updates happen inside)
        model(x, y, ns['to_one_hot'](y, NUM_CLASSES))
    finally:
        ns['similarity_matrix'] = orig
        for h in hooks:
            h.remove()
    return ops


def summarize_flops(ops, B):
    tot = dict(fwd=0, train_x3=0, train_exact=0)
    by_role = {}
    for o in ops:
        f = o['fwd']
        if o['role'] == 'sim_matrix_target':
            x3 = f                        # detached, forward only
            exact = f
        elif o['kind'] == 'matmul':
            x3 = 3 * f                    # R = xn xn^T: fwd + 2 grad matmuls
            exact = 3 * f
        else:
            x3 = 3 * f
            # backward: grad_weight always (2*macs); grad_input only when needed
            exact = f + f + (f if o['input_requires_grad'] else 0)
        o['train_x3'] = x3
        o['train_exact'] = exact
        for k, v in (('fwd', f), ('train_x3', x3), ('train_exact', exact)):
            tot[k] += v
            by_role.setdefault(o['role'], dict(fwd=0, train_x3=0, train_exact=0))[k] += v
    per_sample = {k: v / B for k, v in tot.items()}
    return tot, per_sample, by_role


def cmd_flops(a):
    set_threads(a.threads)
    rows = []
    presets = a.presets.split(',') if a.presets else [a.preset]
    for p in presets:
        a.preset = p
        ns, args = load_reference(a.train_py, model_overrides(a))
        B = a.batch if a.batch else args.batch_size
        ops = count_flops(ns, args, B)
        tot, per_sample, by_role = summarize_flops(ops, B)
        # inference-only forward (no local heads): encoders + output layer
        fwd_pure = sum(o['fwd'] for o in ops if o['role'] in ('encoder', 'global')) / B
        rows.append(dict(preset=p, desc=PRESET_DESC.get(p, ''), batch=B,
                         per_sample=per_sample, per_step=tot,
                         per_sample_by_role={r: {k: v / B for k, v in d.items()}
                                             for r, d in by_role.items()},
                         fwd_inference_per_sample=fwd_pure, ops=ops))
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(rows, f, indent=1)
    for r in rows:
        print('== preset %s (%s), batch %d' % (r['preset'], r['desc'], r['batch']))
        print('%-28s %-10s %-26s %14s %14s %14s' % ('block', 'role', 'shape', 'fwd MFLOP/smp', 'x3 MFLOP/smp', 'exact MFLOP/smp'))
        for o in r['ops']:
            print('%-28s %-10s %-26s %14.3f %14.3f %14.3f' % (
                o['block'], o['role'][:10], o['shape'][:26], o['fwd'] / r['batch'] / 1e6,
                o['train_x3'] / r['batch'] / 1e6, o['train_exact'] / r['batch'] / 1e6))
        ps = r['per_sample']
        print('TOTAL per sample: fwd %.2f MFLOP, train(x3) %.2f MFLOP, train(exact) %.2f MFLOP; '
              'pure inference fwd %.2f MFLOP' % (ps['fwd'] / 1e6, ps['train_x3'] / 1e6,
                                                 ps['train_exact'] / 1e6,
                                                 r['fwd_inference_per_sample'] / 1e6))
        print('by role (per sample, MFLOP):', {k: {kk: round(vv / 1e6, 3) for kk, vv in v.items()}
                                               for k, v in r['per_sample_by_role'].items()})
        print()


# --------------------------------------------------------------------------
def add_model_flags(p):
    p.add_argument('--preset', choices=sorted(PRESETS), default=None,
                   help='a..f, see PRESET_DESC; explicit flags override it')
    p.add_argument('--model', default=None)
    p.add_argument('--loss-sup', dest='loss_sup', default=None, choices=['pred', 'sim', 'predsim'])
    p.add_argument('--backprop', action='store_true', default=False)
    p.add_argument('--local', action='store_true', default=False,
                   help='force local learning (undo a preset\'s --backprop)')
    p.add_argument('--bio', action='store_true', default=False)
    p.add_argument('--num-layers', dest='num_layers', type=int, default=None)
    p.add_argument('--num-hidden', dest='num_hidden', type=int, default=None)
    p.add_argument('--dim-in-decoder', dest='dim_in_decoder', type=int, default=None)
    p.add_argument('--dropout', type=float, default=None)
    p.add_argument('--nonlin', default=None, choices=['relu', 'leakyrelu'])
    p.add_argument('--lr', type=float, default=None)
    p.add_argument('--batch-size', dest='batch_size', type=int, default=None)
    p.add_argument('--feat-mult', dest='feat_mult', type=float, default=None)
    p.add_argument('--beta', type=float, default=None)
    p.add_argument('--alpha', type=float, default=None)
    p.add_argument('--optim', default=None)
    p.add_argument('--seed', type=int, default=None)
    p.add_argument('--target-proj-size', dest='target_proj_size', type=int, default=None)
    p.add_argument('--no-print-stats', dest='no_print_stats', action='store_true', default=False)
    p.add_argument('--no-batch-norm', dest='no_batch_norm', action='store_true', default=False)
    p.add_argument('--no-detach', dest='no_detach', action='store_true', default=False)
    p.add_argument('--no-similarity-std', dest='no_similarity_std', action='store_true',
                   default=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--train-py', required=True, help='path to the reference train.py')
    ap.add_argument('--data-dir', default='/usr/share/datasets/fashion-mnist',
                    help='folder with {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz')
    ap.add_argument('--threads', type=int, default=2)
    sub = ap.add_subparsers(dest='cmd', required=True)

    b = sub.add_parser('bench')
    add_model_flags(b)
    b.add_argument('--warmup', type=int, default=5)
    b.add_argument('--steps', type=int, default=50)
    b.add_argument('--slow-threshold-s', dest='slow_threshold_s', type=float, default=5.0,
                   help='if the first step takes longer, time only --slow-steps')
    b.add_argument('--slow-warmup', dest='slow_warmup', type=int, default=1)
    b.add_argument('--slow-steps', dest='slow_steps', type=int, default=5)
    b.add_argument('--eval-reps', dest='eval_reps', type=int, default=0)
    b.add_argument('--eval-warmup', dest='eval_warmup', type=int, default=3)
    b.add_argument('--eval-batch', dest='eval_batch', type=int, default=1000)
    b.add_argument('--json', default=None)
    b.add_argument('--verbose', action='store_true')
    b.add_argument('--quiet-wait', dest='quiet_wait', type=float, default=0,
                   help='wait up to this many s for other processes to go idle first')
    b.add_argument('--flush-denormal', dest='flush_denormal', action='store_true',
                   help='diagnostic only: torch.set_flush_denormal(True) (not the reference)')
    b.add_argument('--dataset', default='fashion_mnist', choices=['fashion_mnist', 'cifar10'],
                   help='fashion_mnist: real augmented batches (--data-dir); cifar10: random '
                        '3x32x32 images and labels of CIFAR-10\'s shapes (timing only)')
    b.add_argument('--fix-basicblock', dest='fix_basicblock', action='store_true',
                   help='rebuild the BasicBlock convolutions whose dim_out the reference gets '
                        'wrong (fix_basicblock_dim_out): without it a resnet18/34 pred or '
                        'predsim step stops with a shape error')

    s = sub.add_parser('suite')
    s.add_argument('--presets', default='a,b,c,d,e,f')
    s.add_argument('--warmup', type=int, default=5)
    s.add_argument('--steps', type=int, default=50)
    s.add_argument('--slow-threshold-s', dest='slow_threshold_s', type=float, default=5.0)
    s.add_argument('--eval-reps', dest='eval_reps', type=int, default=20)
    s.add_argument('--eval-vgg', dest='eval_vgg', action='store_true')
    s.add_argument('--workdir', default='.')
    s.add_argument('--out', default='suite.json')
    s.add_argument('--verbose', action='store_true')
    s.add_argument('--quiet-wait', dest='quiet_wait', type=float, default=0)

    t = sub.add_parser('train')
    add_model_flags(t)
    t.add_argument('--epochs', type=int, default=5)
    t.add_argument('--test-batch', dest='test_batch', type=int, default=1000)
    t.add_argument('--train-limit', dest='train_limit', type=int, default=None)
    t.add_argument('--no-augment', dest='no_augment', action='store_true',
                   help='diagnostic: no crop/flip (the reference augments FashionMNIST)')
    t.add_argument('--json', default=None)
    t.add_argument('--quiet-wait', dest='quiet_wait', type=float, default=0)

    f = sub.add_parser('flops')
    add_model_flags(f)
    f.add_argument('--presets', default=None, help='comma list, e.g. a,e')
    f.add_argument('--batch', type=int, default=None)
    f.add_argument('--json', default=None)

    a = ap.parse_args(argv)
    if not os.path.isfile(a.train_py):
        raise SystemExit('--train-py %s: no such file' % a.train_py)
    {'bench': cmd_bench, 'suite': cmd_suite, 'train': cmd_train, 'flops': cmd_flops}[a.cmd](a)


if __name__ == '__main__':
    main()
