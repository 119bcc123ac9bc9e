#!/usr/bin/env python3
"""equiv: step-for-step equivalence of localjax against the official PyTorch code of
"Training Neural Networks with Local Error Signals" (Nøkland & Eidnes 2019).

The two codes run in two Python processes (two venvs) on the SAME initial state and the
SAME batches; each writes what it computed, and `compare` lines them up.

  jax side    (localjax venv): build the localjax model (`localjax.models.build_model`),
              initialise it (seed), export every parameter, BatchNorm statistic and fixed
              matrix in the PyTorch layout and names (init.npz), then train N steps with
              localjax's own per-block step (`localjax.training.steps.make_train_step`, or
              `--step-impl reference`) and Adam (`localjax.training.optimizer.make_optimizer`),
              recording per step every block's local loss (pred / sim parts, from a
              train-mode forward at the pre-step state, and the total from the step's own
              metrics), the output loss and the train logits; snapshots of the state and of
              Adam's moments; eval-mode logits on test images.
  torch side  (reference venv): exec only the model classes of the reference train.py
              (via refbench.py, `load_reference`; the file is read at run time, never
              copied), build model + optimisers exactly as its main script does, load
              init.npz into it (every state_dict entry must be present with its exact
              shape, except the few the reference builds but localjax has no use for:
              `REF_ONLY`), run the body of its train() loop on the same batches, and record
              the same quantities (per-block loss_pred/loss_sim from the reference's own
              layer statistics).
              Both sides also record the gradient each step hands its optimizer (jax: a
              pass-through optax transform in front of localjax's optimizer keeps it;
              torch: a global optimizer step pre-hook reads every `.grad` before the
              reference's optimizers step and clear them) and, on the torch side, each
              Adam entry's smallest denominator sqrt(v_hat_t) so far (`adam_denom_min/`).
  compare     tables (markdown + json) of both sides, and one-line summaries: SUMMARY
              (losses, parameters, moments, BatchNorm statistics, logits), SUMMARY2
              (gradients; trained tensors raw, in Adam's eps regime and the rest; the
              step-1 check that the parameter difference is the optimizer's image of the
              gradient difference), SUMMARY3 (parameter differences by the size of the
              Adam denominator).
  run         jax side -> torch side -> compare for one config, with both pythons; with
              `--dtype float64` it first exports the float32 initial state, builds a
              float64 copy of localjax (make_patched.py --f64) and runs both sides in
              float64 from that state.

Data: real Fashion-MNIST (IDX gz), normalised once in numpy, (x/255 - 0.286)/0.353 in
float32, fed identically (JAX NHWC, PyTorch NCHW); batch k = a fixed numpy permutation
(seed --data-seed) slice; no augmentation on both sides. `input_size` 32 zero-pads the
28x28 images by 2 px (before normalisation) for the Wide ResNets, whose final 8x8 pool and
hard-coded stem size need 32x32. Dropout: 0 by default; with --set dropout=p > 0 (MLP and
VGG only) the jax side records the masks its step draws (dropout_masks.npz: the Dropout
outputs of a train-mode forward with the step's own dropout key) and the torch side
replaces each block's nn.Dropout / nn.Dropout2d by one that applies those masks with
torch's arithmetic, input * (mask / (1 - p)); `run` passes the file on by itself.

Precision: --dtype float32 (default) or float64. For float64 the jax side needs a
localjax copy whose float32 casts are lifted (`--localjax-path`, made by make_patched.py
--f64; `run` does it), and the torch side uses torch.set_default_dtype(float64) and gives
the exec'd reference code a torch whose FloatTensor is DoubleTensor (train.py hard-codes
torch.FloatTensor for the bio BCE targets, which otherwise makes that BCE float32); both
load the float32 init.npz.

ResNets: the reference's BasicBlock gives both of its convolutions the unit's INPUT size as
`dim_out`, so in the first (strided) unit of stages 2-4 its pred decoder is sized for a map
twice as large as the one it gets, and a local-learning forward with pred/predsim stops
with a shape error (`mat1 and mat2 shapes cannot be multiplied`). Configs with
`ref_fix_basicblock=True` (resnet18_predsim) rebuild, after the reference model is built,
the convolutions of every BasicBlock whose `dim_out` differs from its real output size with
the reference's own LocalLossBlockConv and the right size (`fix_basicblock_dim_out`); the
log records which. `resnet18_sim` (no decoder) and the backprop configs run the reference
unchanged.

Usage (JAX_PY = a python that imports localjax, REF_PY = a python with torch, LOCALLOSS_REF =
the reference's train.py, as tools/crosscheck/ref_setup.sh exports them; run under
`nice -n 19`):

  python equiv.py run --config mlp_predsim --steps 100 --work SCRATCH/runs/mlp_predsim
                      [--dtype float64] [--unbiased-bn] [--set key=value ...]
                      [--localjax-src DIR]   # DIR/localjax instead of this repository's
  python equiv.py jax   --config mlp_predsim --steps 100 --out DIR/jax [--init-npz F]
                        [--dtype float64 --localjax-path SCRATCH/lj_f64] [--init-only]
                        [--step-impl fused|reference] [--set key=value ...]
  python equiv.py torch --config mlp_predsim --steps 100 --out DIR/torch --init-npz DIR/jax/init.npz
                        [--dtype float64] [--threads 1]
  python equiv.py compare --ref DIR/torch --test DIR/jax --out DIR/compare_jax_vs_torch
  python equiv.py list     # the configs

Configs (--set overrides any field of `list`, e.g. --set dropout=0.1 --set feat_mult=0.5,
--set optim=sgd for plain SGD on both sides, which keeps Adam's eps regime out of the
parameter differences):
  mlp_predsim, mlp_pred, mlp_sim, mlp_backprop, mlp_bio_predsim,
  vgg8b_predsim, vgg8b_bio_predsim, vgg8b_backprop   (vgg8b: feat_mult 0.25, dim_in_decoder 1024)
  resnet18_predsim, resnet18_sim, resnet18_backprop  (feat_mult 0.125: widths 8..64; 28x28)
  wresnet16-4_predsim, wresnet16-4_backprop          (32x32; the reference has no width
      option for Wide ResNets: full width 16/64/128/256, batch 32, 10-24 min per float64
      run on 2 shared cores with --n-test 500; --set model=wresnet10-1 or wresnet16-1
      for a small one, built from the reference's own Wide_ResNet class)
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))  # tools/crosscheck/ -> the repository
REFBENCH_DIR = HERE  # refbench.py sits beside this file
DEFAULT_TRAIN_PY = os.environ.get('LOCALLOSS_REF', 'train.py')  # the reference's train.py
DEFAULT_DATA = os.environ.get('FASHION_MNIST_DIR', '/usr/share/datasets/fashion-mnist')
JAX_PY = os.environ.get('JAX_PY', sys.executable)  # a python that imports localjax
TORCH_PY = os.environ.get('REF_PY', 'python3')  # a python with torch (CPU)
MEAN, STD = 0.286, 0.353
NUM_CLASSES = 10
INPUT_DIM = 28

# --------------------------------------------------------------------------- configs
BASE = dict(model='mlp', loss='predsim', nonlin='leakyrelu', beta=0.99, bio=False,
            num_layers=None, num_hidden=1024, feat_mult=1.0, dim_in_decoder=4096,
            target_proj_size=128, dropout=0.0, lr=5e-4, batch_size=128, input_size=28,
            ref_fix_basicblock=False, optim='adam')
CONFIGS = {
    'mlp_predsim': dict(loss='predsim', nonlin='leakyrelu'),
    'mlp_pred': dict(loss='pred', nonlin='relu'),
    'mlp_sim': dict(loss='sim', nonlin='leakyrelu'),
    'mlp_backprop': dict(loss='backprop', nonlin='relu'),
    # the paper's bio runs use beta 0.01 (METHOD.md, Backprop-free variant)
    'mlp_bio_predsim': dict(loss='predsim', nonlin='leakyrelu', bio=True, beta=0.01),
    'vgg8b_predsim': dict(model='vgg8b', loss='predsim', nonlin='leakyrelu',
                          feat_mult=0.25, dim_in_decoder=1024),
    'vgg8b_bio_predsim': dict(model='vgg8b', loss='predsim', nonlin='leakyrelu', bio=True,
                              beta=0.01, feat_mult=0.25, dim_in_decoder=1024),
    'vgg8b_backprop': dict(model='vgg8b', loss='backprop', nonlin='relu', feat_mult=0.25),
    # ResNet-18 at widths 8/16/32/64 on 28x28 (28 -> 28 -> 14 -> 7 -> 4, 4x4 pool -> 1x1);
    # dim_in_decoder 512 makes the 7x7 and 14x14 maps pool with padding (ceil sizes).
    # predsim needs the BasicBlock dim_out fix of the reference (module docstring)
    'resnet18_predsim': dict(model='resnet18', loss='predsim', nonlin='leakyrelu',
                             feat_mult=0.125, dim_in_decoder=512, ref_fix_basicblock=True),
    'resnet18_sim': dict(model='resnet18', loss='sim', nonlin='leakyrelu', feat_mult=0.125),
    'resnet18_backprop': dict(model='resnet18', loss='backprop', nonlin='relu',
                              feat_mult=0.125),
    # Wide ResNets need 32x32 (final 8x8 pool; the reference's stem assumes 32); the
    # reference has no width option for them, so feat_mult stays 1 (batch 32 keeps it small)
    'wresnet16-4_predsim': dict(model='wresnet16-4', loss='predsim', nonlin='leakyrelu',
                                dim_in_decoder=1024, input_size=32, batch_size=32),
    'wresnet16-4_backprop': dict(model='wresnet16-4', loss='backprop', nonlin='relu',
                                 input_size=32, batch_size=32),
}
RESIDUAL = ('resnet', 'wresnet')  # model-name prefixes of the residual families


def is_residual(c):
    return c['model'].startswith(RESIDUAL)


def make_config(name, sets=()):
    if name not in CONFIGS:
        raise SystemExit('unknown config %r; choose one of %s' % (name, sorted(CONFIGS)))
    c = dict(BASE)
    c.update(CONFIGS[name])
    for s in sets:
        k, v = s.split('=', 1)
        if k not in c:
            raise SystemExit('unknown field %r' % k)
        old = c[k]
        if isinstance(old, bool):
            c[k] = v.lower() in ('1', 'true', 'yes')
        elif isinstance(old, int) and not isinstance(old, bool):
            c[k] = int(v)
        elif isinstance(old, float):
            c[k] = float(v)
        elif old is None:
            c[k] = int(v)
        else:
            c[k] = v
    if c['num_layers'] is None:
        c['num_layers'] = 3 if c['model'] == 'mlp' else 1
    if c['input_size'] not in (28, 32):
        raise SystemExit('input_size must be 28 or 32 (zero-padded Fashion-MNIST)')
    if c['model'].startswith('wresnet') and c['feat_mult'] != 1.0:
        raise SystemExit('the reference has no width option for Wide ResNets: keep feat_mult=1 '
                         '(use a smaller model, e.g. --set model=wresnet10-1)')
    if c['model'].startswith('wresnet') and c['input_size'] != 32:
        raise SystemExit('Wide ResNets need input_size=32 (final 8x8 pool)')
    if c['optim'] not in ('adam', 'sgd'):
        raise SystemExit('optim must be adam or sgd (plain SGD: no momentum, no weight decay)')
    if is_residual(c) and c['dropout'] > 0:
        raise SystemExit('dropout masks are shared for MLP and VGG only')
    c['name'] = name
    return c


# --------------------------------------------------------------------------- data
def load_data(data_dir, n_train_batches, batch, data_seed, n_test, input_size=INPUT_DIM):
    """Normalised float32 images [N, S, S] (S = input_size: 28, or 32 zero-padded by 2 px
    before normalisation) and int64 labels; batch index lists."""
    import numpy as np
    sys.path.insert(0, REFBENCH_DIR)
    import refbench  # our own code: IDX reader (numpy only)
    xtr, ytr = refbench.load_split(data_dir, 'train')
    xte, yte = refbench.load_split(data_dir, 'test', limit=n_test)
    if input_size != INPUT_DIM:
        p = (input_size - INPUT_DIM) // 2
        xtr = np.pad(xtr, ((0, 0), (p, p), (p, p)))
        xte = np.pad(xte, ((0, 0), (p, p), (p, p)))
    perm = np.random.default_rng(data_seed).permutation(len(ytr))
    if n_train_batches * batch > len(ytr):
        raise SystemExit('more steps than one epoch of batches is not supported')
    batches = [perm[k * batch:(k + 1) * batch] for k in range(n_train_batches)]

    def norm(u8):  # (x/255 - mean)/std in float32, as ToTensor + Normalize and localjax do
        x = u8.astype(np.float32) / np.float32(255.0)
        return (x - np.float32(MEAN)) / np.float32(STD)

    return norm(xtr), ytr.astype(np.int64), norm(xte), yte.astype(np.int64), batches


def snapshot_steps(n):
    return sorted({0, 1, min(10, n), n})


# --------------------------------------------------------------------------- layouts
def decoder_geometry(C, H, W, dim_in_decoder):
    """Average-pool output size (oh, ow) in front of a conv block's decoder, following the
    reference's rule (kernel doubled height first, then width, while C*oh*ow > dim)."""
    import math
    kh = kw = 1
    oh, ow = H, W
    dim = C * oh * ow
    while dim > dim_in_decoder and kh < H:
        kh *= 2
        oh = math.ceil(H / kh)
        dim = C * oh * ow
        if dim > dim_in_decoder:
            kw *= 2
            ow = math.ceil(W / kw)
            dim = C * oh * ow
    return oh, ow


def layout_spec(c, vgg_configs=None, maps=None, out_rows=None):
    """Per flax block name: torch prefix, and (oh, ow, C) of flattened maps it reads.

    MLP and VGG follow the layer lists (`vgg_configs`: localjax.models.VGG_CONFIGS); the
    residual families read the block output sizes from a shape probe (`maps`: block name ->
    (H, W, C) of its conv output) and the output layer's input size from its kernel rows
    (`out_rows`; the map before the flatten is square)."""
    spec = {}
    if c['model'] == 'mlp':
        for i in range(c['num_layers']):
            spec['block_dense_%d' % i] = dict(prefix='layers.%d.' % i, in_map=None, dec_map=None)
        spec['output'] = dict(prefix='layer_out.', in_map=None, dec_map=None)
        return spec
    if is_residual(c):
        C = None
        for name, (H, W, C) in maps.items():
            oh, ow = decoder_geometry(C, H, W, c['dim_in_decoder'])
            if name == 'conv1':
                prefix, unit = 'conv1.', None
            else:  # layer<s>_<u>_conv<j> -> layer<s>.<u>.conv<j>.
                stage, u, conv = name.split('_')
                unit = '%s.%s.' % (stage, u)
                prefix = unit + conv + '.'
            spec[name] = dict(prefix=prefix, unit=unit, in_map=None, dec_map=(oh, ow, C))
        side = int(round((out_rows // C) ** 0.5))
        assert side * side * C == out_rows, (out_rows, C)
        spec['output'] = dict(prefix='linear.', unit=None, dec_map=None,
                              in_map=(side, side, C) if side > 1 else None)
        return spec
    H = W = c['input_size']
    C = 1
    for i, item in enumerate(vgg_configs[c['model']]):
        if item == 'M':
            H, W = H // 2, W // 2
            continue
        C = int(item * c['feat_mult'])
        oh, ow = decoder_geometry(C, H, W, c['dim_in_decoder'])
        spec['block_conv_%d' % i] = dict(prefix='features.%d.' % i, in_map=None,
                                         dec_map=(oh, ow, C))
    for i in range(c['num_layers']):
        spec['block_dense_%d' % i] = dict(prefix='classifier.layers.%d.' % i,
                                          in_map=(H, W, C) if i == 0 else None, dec_map=None)
    spec['output'] = dict(prefix='classifier.layer_out.', in_map=None, dec_map=None)
    return spec


def ref_only_keys(c):
    """state_dict entries the reference builds but localjax has no counterpart for; the
    torch side leaves them at their (deterministic) construction values."""
    if not c['model'].startswith('wresnet'):
        return ()
    if c['loss'] == 'backprop':
        # the stem's `bn` (post_act=False): built in backprop mode, never applied
        return tuple('conv1.bn.' + k for k in ('weight', 'bias', 'running_mean', 'running_var'))
    # the final bn1's weight and bias: no optimizer of the reference holds them in local
    # learning (they stay 1 and 0); localjax's bn_final has no scale or bias there
    return ('bn1.weight', 'bn1.bias')


def _perm_rows_fwd(a, hwc):
    """[h*w*C, K] (flax flatten order h,w,c) -> torch [K, C*h*w] (order c,h,w)."""
    h, w, C = hwc
    K = a.shape[1]
    return a.reshape(h, w, C, K).transpose(3, 2, 0, 1).reshape(K, C * h * w)


def _perm_rows_inv(t, hwc):
    h, w, C = hwc
    K = t.shape[0]
    return t.reshape(K, C, h, w).transpose(2, 3, 1, 0).reshape(h * w * C, K)


BN_NAMES = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}


def leaf_rule(col, path, spec):
    """(torch name, kind, extra) for one flax leaf; kind in id, T, conv, permT."""
    if 'unit' in spec[path[0]]:
        return leaf_rule_residual(col, path, spec)
    blk, rest = path[0], tuple(path[1:])
    s = spec[blk]
    p = s['prefix']
    if col == 'batch_stats':
        assert rest[0] == 'bn', path
        return p + {'mean': 'bn.running_mean', 'var': 'bn.running_var'}[rest[1]], 'id', None
    if col == 'constants':
        if rest == ('head', 'label_projection'):
            return p + 'proj_y.weight', 'T', None
        if rest == ('head', 'decoder_feedback'):
            return (p + 'decoder_y.weight_fa', 'permT', s['dec_map']) if s['dec_map'] else \
                (p + 'decoder_y.weight_fa', 'T', None)
        raise KeyError(path)
    # params
    if rest in (('dense', 'kernel'),):
        if s['in_map'] is not None:
            return p + ('encoder.weight' if blk != 'output' else 'weight'), 'permT', s['in_map']
        return p + ('encoder.weight' if blk != 'output' else 'weight'), 'T', None
    if rest == ('dense', 'bias'):
        return p + ('encoder.bias' if blk != 'output' else 'bias'), 'id', None
    if rest == ('conv', 'kernel'):
        return p + 'encoder.weight', 'conv', None
    if rest == ('conv', 'bias'):
        return p + 'encoder.bias', 'id', None
    if rest == ('bn', 'scale'):
        return p + 'bn.weight', 'id', None
    if rest == ('bn', 'bias'):
        return p + 'bn.bias', 'id', None
    if rest == ('head', 'sim_proj', 'kernel'):
        if blk.startswith('block_conv'):
            return p + 'conv_loss.weight', 'conv', None
        return p + 'linear_loss.weight', 'T', None
    if rest in (('head', 'decoder', 'kernel'), ('head', 'decoder_kernel')):
        if s['dec_map'] is not None:
            return p + 'decoder_y.weight', 'permT', s['dec_map']
        return p + 'decoder_y.weight', 'T', None
    if rest in (('head', 'decoder', 'bias'), ('head', 'decoder_bias')):
        return p + 'decoder_y.bias', 'id', None
    raise KeyError('no torch name for %s %s' % (col, path))


def leaf_rule_residual(col, path, spec):
    """leaf_rule of the ResNets and Wide ResNets (blocks.LocalResConv): localjax block
    `layer<s>_<u>_conv<j>` is the reference's `layer<s>.<u>.conv<j>` (LocalLossBlockConv);
    the projection shortcut, which localjax keeps in the unit's last block, is the unit's
    `shortcut.0` (conv) and `shortcut.1` (BatchNorm); the Wide ResNet's final BatchNorm
    (`bn_final` of the last block) is the network's `bn1`; the output layer is `linear`."""
    blk, rest = path[0], tuple(path[1:])
    s = spec[blk]
    p = s['prefix']
    if blk == 'output':
        if rest == ('dense', 'kernel'):
            return (p + 'weight', 'permT', s['in_map']) if s['in_map'] else (p + 'weight', 'T', None)
        if rest == ('dense', 'bias'):
            return p + 'bias', 'id', None
        raise KeyError('no torch name for %s %s' % (col, path))
    if col == 'constants':
        raise KeyError('bio is not supported for the residual families: %s' % (path,))
    if len(rest) == 2 and rest[1] in BN_NAMES:
        where = {'bn': p + 'bn.', 'bn_pre': p + 'bn_pre.', 'bn_final': 'bn1.',
                 'shortcut_bn': (s['unit'] or '') + 'shortcut.1.'}.get(rest[0])
        if where is not None and (rest[0] != 'shortcut_bn' or s['unit']):
            return where + BN_NAMES[rest[1]], 'id', None
    if rest[:2] == ('head', 'bn') and len(rest) == 3:  # the loss-only BatchNorm (no post_act)
        return p + 'bn.' + BN_NAMES[rest[2]], 'id', None
    if rest == ('conv', 'kernel'):
        return p + 'encoder.weight', 'conv', None
    if rest == ('conv', 'bias'):
        return p + 'encoder.bias', 'id', None
    if rest == ('shortcut_conv', 'kernel') and s['unit']:
        return s['unit'] + 'shortcut.0.weight', 'conv', None
    if rest == ('shortcut_conv', 'bias') and s['unit']:
        return s['unit'] + 'shortcut.0.bias', 'id', None
    if rest == ('head', 'sim_proj', 'kernel'):
        return p + 'conv_loss.weight', 'conv', None
    if rest == ('head', 'decoder', 'kernel'):
        return p + 'decoder_y.weight', 'permT', s['dec_map']
    if rest == ('head', 'decoder', 'bias'):
        return p + 'decoder_y.bias', 'id', None
    raise KeyError('no torch name for %s %s' % (col, path))


def to_torch_layout(a, kind, extra):
    import numpy as np
    a = np.asarray(a)
    if kind == 'id':
        return a.copy()
    if kind == 'T':
        return np.ascontiguousarray(a.T)
    if kind == 'conv':
        return np.ascontiguousarray(a.transpose(3, 2, 0, 1))
    if kind == 'permT':
        return np.ascontiguousarray(_perm_rows_fwd(a, extra))
    raise ValueError(kind)


def from_torch_layout(t, kind, extra):
    import numpy as np
    t = np.asarray(t)
    if kind == 'id':
        return t.copy()
    if kind == 'T':
        return np.ascontiguousarray(t.T)
    if kind == 'conv':
        return np.ascontiguousarray(t.transpose(2, 3, 1, 0))
    if kind == 'permT':
        return np.ascontiguousarray(_perm_rows_inv(t, extra))
    raise ValueError(kind)


# --------------------------------------------------------------------------- jax side
def _flat(tree):
    """{(k1, k2, ...): leaf} of a nested dict."""
    out = {}

    def rec(prefix, t):
        if isinstance(t, dict) or hasattr(t, 'items'):
            for k, v in t.items():
                rec(prefix + (k,), v)
        else:
            out[prefix] = t
    rec((), tree)
    return out


def _unflat(flat):
    out = {}
    for path, v in flat.items():
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = v
    return out


def _grad_recorder():
    """An optax transform that returns the gradient unchanged and keeps it as its state."""
    import jax
    import jax.numpy as jnp
    import optax

    def init(params):
        return jax.tree.map(jnp.zeros_like, params)

    def update(grads, state, params=None):
        del state, params
        return grads, grads

    return optax.GradientTransformation(init, update)


def cmd_jax(a):
    if a.localjax_path:
        sys.path.insert(0, a.localjax_path)
    import numpy as np
    import jax
    if a.dtype == 'float64':
        jax.config.update('jax_enable_x64', True)
    import jax.numpy as jnp
    import optax
    import localjax
    from localjax import losses
    from localjax.models import VGG_CONFIGS, build_model
    from localjax.network import output_loss_weight
    from localjax.torch_defaults import activation as _act
    from localjax.training.optimizer import make_optimizer
    from localjax.training.state import create_train_state
    from localjax.training.steps import _step_keys, make_reference_train_step, make_train_step

    c = make_config(a.config, a.set)
    if a.localjax_path and not os.path.abspath(localjax.__file__).startswith(
            os.path.abspath(a.localjax_path)):
        raise SystemExit('--localjax-path %s: imported %s instead' % (a.localjax_path,
                                                                    localjax.__file__))
    os.makedirs(a.out, exist_ok=True)
    dt = jnp.float64 if a.dtype == 'float64' else jnp.float32
    npdt = np.float64 if a.dtype == 'float64' else np.float32
    xtr, ytr, xte, yte, batches = load_data(a.data_dir, max(a.steps, 1), c['batch_size'],
                                            a.data_seed, a.n_test, c['input_size'])
    model = build_model(c['model'], NUM_CLASSES, c['loss'], num_layers=c['num_layers'],
                        num_hidden=c['num_hidden'], feat_mult=c['feat_mult'],
                        nonlin=c['nonlin'], dropout=c['dropout'], beta=c['beta'],
                        dim_in_decoder=c['dim_in_decoder'], bio=c['bio'],
                        target_proj_size=c['target_proj_size'], dtype=dt)
    # Adam (or plain SGD), constant rate; in front of it a transform that passes the
    # gradient on unchanged and keeps it in its state, so that the gradient the step
    # computed can be exported (`grad/<name>` in the snapshots)
    tx = optax.chain(_grad_recorder(), make_optimizer(c['lr'], (), steps_per_epoch=469,
                                                      optim=c['optim']))
    x0 = jnp.asarray(xtr[batches[0][:2], :, :, None])
    y0 = jnp.asarray(ytr[batches[0][:2]].astype(np.int32))
    state = create_train_state(model, tx, jax.random.key(a.init_seed), x0, y0)
    # the networks' blocks, in order (LocalNetwork.named_layers: plain layers have no name)
    block_names = [n for n, _ in model.named_layers() if n is not None]
    maps = out_rows = None
    if is_residual(c):
        # the conv output size of every block (the map its local heads read)
        _, inter = jax.eval_shape(lambda v, x, y: model.apply(
            v, x, y, train=False, capture_intermediates=True, mutable=['intermediates']),
            state.variables(), x0, y0)
        maps = {n: tuple(inter['intermediates'][n]['conv']['__call__'][0].shape[1:])
                for n in block_names}
        out_rows = state.params[model.output_name()]['dense']['kernel'].shape[0]
    spec = layout_spec(c, VGG_CONFIGS, maps, out_rows)

    cols = {'params': state.params, 'batch_stats': state.batch_stats,
            'constants': state.constants}
    rules = {}
    for col, tree in cols.items():
        for path, leaf in _flat(tree).items():
            rules[(col,) + path] = leaf_rule(col, path, spec)
    torch_names = [r[0] for r in rules.values()]
    dup = sorted({n for n in torch_names if torch_names.count(n) > 1})
    if dup:
        raise SystemExit('two localjax leaves map to one reference name: %s' % dup)

    def export(st):
        out = {}
        for col, tree in (('params', st.params), ('batch_stats', st.batch_stats),
                          ('constants', st.constants)):
            for path, leaf in _flat(tree).items():
                name, kind, extra = rules[(col,) + path]
                out[name] = to_torch_layout(np.asarray(leaf), kind, extra)
        return out

    def export_grads(st):
        out = {}
        for path, leaf in _flat(st.opt_state[0]).items():  # _grad_recorder's state
            name, kind, extra = rules[('params',) + path]
            out['grad/' + name] = to_torch_layout(np.asarray(leaf), kind, extra)
        return out

    def export_moments(st):
        adam = [s for s in jax.tree_util.tree_leaves(
            st.opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)]
        assert len(adam) == (1 if c['optim'] == 'adam' else 0)
        out = {}
        if not adam:
            return out
        for key, tree in (('exp_avg', adam[0].mu), ('exp_avg_sq', adam[0].nu)):
            for path, leaf in _flat(tree).items():
                name, kind, extra = rules[('params',) + path]
                out[key + '/' + name] = to_torch_layout(np.asarray(leaf), kind, extra)
        return out

    if a.init_npz:
        z = np.load(a.init_npz)
        newcols = {}
        for col, tree in cols.items():
            flat = {}
            for path, leaf in _flat(tree).items():
                name, kind, extra = rules[(col,) + path]
                v = from_torch_layout(z[name], kind, extra).astype(npdt)
                assert v.shape == tuple(leaf.shape), (name, v.shape, leaf.shape)
                flat[path] = jnp.asarray(v)
            newcols[col] = _unflat(flat) if flat else {}
        params = newcols['params']
        state = state.replace(params=params, batch_stats=newcols['batch_stats'],
                              constants=newcols['constants'], opt_state=tx.init(params))
    elif a.dtype == 'float64':
        raise SystemExit('--dtype float64 needs --init-npz (the float32 run\'s init.npz)')
    init = export(state)
    np.savez(os.path.join(a.out, 'init.npz'), **init)
    names_seen = sorted(init)
    if a.init_only:
        print('jax side: initial state in %s (%d tensors)' % (
            os.path.join(a.out, 'init.npz'), len(names_seen)))
        return

    weight = output_loss_weight(model)
    if a.step_impl == 'fused':
        step = make_train_step(model, tx, preprocess=None, seed=0)
    else:
        step = make_reference_train_step(model, tx, preprocess=None, seed=0)
    step = jax.jit(step)

    base_key = jax.random.key(0)  # make_train_step(..., seed=0) above

    @jax.jit
    def probe(st, x, y):
        # the step's own dropout key, so that with dropout > 0 the probed loss parts are
        # those of the step's forward (same masks: the same Flax RNG streams per block)
        _, dkey = _step_keys(base_key, st.step)
        (logits, local), _ = model.apply(st.variables(), x, y, train=True,
                                         rngs={'dropout': dkey},
                                         mutable=['batch_stats'])
        parts = [None if t is None else (t['pred'], t['sim'], t['loss']) for t in local]
        return logits, parts, losses.pred_loss(logits, y)

    @jax.jit
    def evaluate(st, x):
        return model.apply(st.variables(), x, train=False)[0]

    def run_eval(st):
        outs = []
        for s in range(0, len(yte), a.eval_batch):
            outs.append(np.asarray(evaluate(st, jnp.asarray(xte[s:s + a.eval_batch, :, :, None]
                                                            .astype(npdt)))))
        return np.concatenate(outs)

    # dropout masks (MLP and VGG): the step's own dropout stream (training.steps._step_keys,
    # seed 0), read back from the Dropout outputs of a train-mode forward with the same rngs
    @jax.jit
    def mask_probe(st, x, y):
        _, dkey = _step_keys(base_key, st.step)
        _, upd = model.apply(st.variables(), x, y, train=True, rngs={'dropout': dkey},
                             capture_intermediates=True, mutable=['batch_stats', 'intermediates'])
        inter = upd['intermediates']
        out = {}
        for n in block_names:
            d = inter[n]['Dropout_0']['__call__'][0]
            hpre = _act(c['nonlin'])(inter[n]['bn']['__call__'][0])
            if d.ndim == 2:
                known = hpre != 0
                m = jnp.where(known, d != 0, True)
            else:  # Dropout2d: one value per (example, channel)
                known = jnp.any(hpre != 0, axis=(1, 2))
                m = jnp.where(known, jnp.any(d != 0, axis=(1, 2)), True)
            out[n] = m
        return out

    record_masks = c['dropout'] > 0
    masks = {n: [] for n in block_names}

    snaps = snapshot_steps(a.steps)
    log = dict(side='jax', config=c, dtype=a.dtype, step_impl=a.step_impl,
               localjax_file=localjax.__file__, jax=jax.__version__,
               output_loss_weight=weight, tensors=names_seen, blocks=block_names,
               steps=[], eval={})
    train_logits = []
    t0 = time.time()
    for k in range(1, a.steps + 1):
        idx = batches[k - 1]
        xb = jnp.asarray(xtr[idx][:, :, :, None].astype(npdt))
        yb = jnp.asarray(ytr[idx].astype(np.int32))
        if k - 1 in snaps:
            log['eval'][k - 1] = run_eval(state)
        logits, parts, out_loss = probe(state, xb, yb)
        if record_masks:
            for n, m in mask_probe(state, xb, yb).items():
                masks[n].append(np.asarray(m))
        state, metrics = step(state, xb, yb)
        metrics = {kk: float(v) for kk, v in metrics.items()}
        n = float(len(idx))
        blocks = []
        for i, p in enumerate(parts):
            if p is None:
                blocks.append(None)
                continue
            pred, sim, loss = (float(v) for v in p)
            if c['loss'] == 'predsim':  # reference's statistics are the weighted terms
                pred_w, sim_w = (1 - c['beta']) * pred, c['beta'] * sim
            else:
                pred_w, sim_w = pred, sim
            blocks.append(dict(pred=pred_w if c['loss'] != 'sim' else None,
                               sim=sim_w if c['loss'] != 'pred' else None,
                               loss=metrics['local_loss/block_%d' % i] / n,
                               loss_probe=loss))
        rec = dict(step=k, blocks=blocks, out_loss=weight * metrics['loss'] / n,
                   out_loss_probe=weight * float(out_loss),
                   train_error=100.0 * (1 - metrics['correct'] / n))
        log['steps'].append(rec)
        train_logits.append(np.asarray(logits))
        if k in snaps:
            np.savez(os.path.join(a.out, 'state_step%d.npz' % k), **export(state),
                     **export_moments(state), **export_grads(state))
        if a.verbose:
            print('jax step %d  out %.6g  %s' % (k, rec['out_loss'], [
                None if b is None else round(b['loss'], 6) for b in blocks]), flush=True)
    log['train_seconds'] = time.time() - t0
    log['eval'][a.steps] = run_eval(state)
    eval_steps = sorted(log['eval'])
    np.savez(os.path.join(a.out, 'eval_logits.npz'),
             **{'step%d' % s: log['eval'][s] for s in eval_steps}, labels=yte)
    log['eval'] = {s: 100.0 * float(np.mean(log['eval'][s].argmax(1) != yte))
                   for s in eval_steps}
    np.save(os.path.join(a.out, 'train_logits.npy'), np.stack(train_logits))
    if record_masks:
        np.savez_compressed(os.path.join(a.out, 'dropout_masks.npz'),
                            **{spec[n]['prefix'] + 'dropout': np.stack(v) for n, v in masks.items()})
        log['dropout_keep_fraction'] = {n: float(np.mean(np.stack(v))) for n, v in masks.items()}
    with open(os.path.join(a.out, 'log.json'), 'w') as f:
        json.dump(log, f, indent=1, default=str)
    print('jax side done: %s (%.1f s train)' % (a.out, log['train_seconds']))


# --------------------------------------------------------------------------- torch side
def ref_overrides(c):
    return dict(model=c['model'], loss_sup=c['loss'] if c['loss'] != 'backprop' else 'predsim',
                backprop=c['loss'] == 'backprop', bio=c['bio'], nonlin=c['nonlin'],
                dropout=c['dropout'], lr=c['lr'], num_layers=c['num_layers'],
                num_hidden=c['num_hidden'], dim_in_decoder=c['dim_in_decoder'],
                feat_mult=c['feat_mult'], beta=c['beta'], batch_size=c['batch_size'],
                target_proj_size=c['target_proj_size'], optim=c['optim'], momentum=0.0,
                weight_decay=0.0)


def ref_train_step(ns, args, model, opt, blocks, data, target):
    """The body of the reference's train() loop for one batch (as refbench.train_step),
    returning the logits and each block's own loss statistics."""
    import refbench

    for m in blocks:
        m.clear_stats()
    output, loss_local, loss_global, correct = refbench.train_step(
        ns, args, model, opt, data, target)
    per_block = []
    for m in blocks:
        if args.backprop or not m.examples:
            per_block.append(None)
            continue
        d = dict(pred=m.loss_pred / m.examples if args.loss_sup != 'sim' else None,
                 sim=m.loss_sim / m.examples if args.loss_sup != 'pred' else None)
        d['loss'] = (d['pred'] or 0.0) + (d['sim'] or 0.0)
        per_block.append(d)
    return output.detach().cpu().numpy(), loss_local, loss_global, per_block, correct


def fix_basicblock_dim_out(ns, args, model, input_dim):
    """refbench.fix_basicblock_dim_out (module docstring: the reference's BasicBlock sizes
    its decoders for the unit's input map)."""
    import refbench
    return refbench.fix_basicblock_dim_out(ns, args, model, input_dim)


def cmd_torch(a):
    import numpy as np
    import torch
    sys.path.insert(0, REFBENCH_DIR)
    import refbench
    torch.set_num_threads(a.threads)
    if a.dtype == 'float64':
        torch.set_default_dtype(torch.float64)
    npdt = np.float64 if a.dtype == 'float64' else np.float32
    c = make_config(a.config, a.set)
    os.makedirs(a.out, exist_ok=True)
    ns, args = refbench.load_reference(a.train_py, ref_overrides(c))
    if a.dtype == 'float64':
        # train.py hard-codes torch.FloatTensor for the bio targets (`.type(float_type)`) and
        # for the unused unsupervised term; with a float32 target, binary_cross_entropy_with_logits
        # computes in float32 even for float64 logits. In float64 mode the exec'd reference
        # code sees a torch whose FloatTensor is DoubleTensor (nothing else changes).
        class _TorchF64:
            def __getattr__(self, k):
                return torch.DoubleTensor if k == 'FloatTensor' else getattr(torch, k)
        ns['torch'] = _TorchF64()
    torch.manual_seed(0)
    ref_fixes = []

    def fix(model):
        if c['ref_fix_basicblock']:
            ref_fixes.extend(fix_basicblock_dim_out(ns, args, model, c['input_size']))

    model, opt = refbench.build(ns, args, input_dim=c['input_size'], fix=fix)
    model.train()
    blocks = [m for m in model.modules()
              if isinstance(m, (ns['LocalLossBlockLinear'], ns['LocalLossBlockConv']))]
    sd = model.state_dict()
    z = np.load(a.init_npz)
    wanted = [k for k in sd if not k.endswith('num_batches_tracked')]
    ref_only = [k for k in ref_only_keys(c) if k in sd]
    missing = [k for k in wanted if k not in z.files and k not in ref_only]
    extra = [k for k in z.files if k not in sd]
    if missing or extra:
        raise SystemExit('init.npz does not cover the reference state: missing %s, extra %s'
                         % (missing, extra))
    with torch.no_grad():
        for k in wanted:
            if k in ref_only and k not in z.files:
                continue  # kept at its construction value (REF_ONLY)
            v = z[k]
            if tuple(v.shape) != tuple(sd[k].shape):
                raise SystemExit('shape of %s: npz %s, reference %s' % (k, v.shape,
                                                                          tuple(sd[k].shape)))
            sd[k].copy_(torch.from_numpy(v.astype(npdt)))
    mask_feed = {}
    if c['dropout'] > 0:
        if not a.dropout_masks:
            raise SystemExit('dropout > 0 needs --dropout-masks (the jax side\'s dropout_masks.npz)')
        zm = np.load(a.dropout_masks)
        nn_ = torch.nn

        class MaskDropout(nn_.Module):
            """torch's own dropout arithmetic (input * (mask / (1 - p))) with a given mask."""
            def __init__(self, p, key):
                super().__init__()
                self.p, self.key = p, key

            def forward(self, x):
                if not self.training:
                    return x
                m = mask_feed[self.key]
                m = m if x.dim() == 2 else m[:, :, None, None]
                return x * (m.to(x.dtype) / (1 - self.p))

        named = dict(torch.nn.Module.named_modules(model))
        for key in zm.files:
            blk = named[key[:-len('.dropout')]]
            assert isinstance(blk.dropout, (nn_.Dropout, nn_.Dropout2d)), key
            assert abs(blk.dropout.p - c['dropout']) < 1e-12, key
            blk.dropout = MaskDropout(blk.dropout.p, key)
        mask_arrays = {k: zm[k] for k in zm.files}
    # name every parameter, for Adam moments (one Adam per block + one for the output)
    pname = {id(p): n for n, p in torch.nn.Module.named_parameters(model)}
    # every optimizer of the reference: the global one, one per block, one per projection
    # shortcut of a residual unit
    optimizers = [opt] + [m.optimizer for m in model.modules()
                          if isinstance(getattr(m, 'optimizer', None), torch.optim.Optimizer)]

    # the gradient every optimizer of the reference is about to apply (its blocks step and
    # clear theirs inside forward()): a global step pre-hook, on during training steps
    grads_seen = {}
    recording = [False]

    def grad_hook(o, args_, kwargs_):
        if recording[0]:
            for g in o.param_groups:
                for p in g['params']:
                    if p.grad is not None:
                        grads_seen[pname[id(p)]] = p.grad.detach().cpu().numpy().copy()

    from torch.optim.optimizer import register_optimizer_step_pre_hook
    register_optimizer_step_pre_hook(grad_hook)
    # per entry, the smallest Adam denominator sqrt(v_hat_t) (bias-corrected second moment)
    # over the steps so far: where it is small, Adam scales the gradient's rounding up
    denom_min = {}

    def track_denominators():
        for o in optimizers:
            b2 = o.param_groups[0].get('betas', (0.9, 0.999))[1]
            for p, st in o.state.items():
                if 'exp_avg_sq' in st:
                    t = float(st['step'])
                    d = (st['exp_avg_sq'] / (1 - b2 ** t)).sqrt().detach().cpu().numpy()
                    n = pname[id(p)]
                    denom_min[n] = d.copy() if n not in denom_min else np.minimum(
                        denom_min[n], d)

    def export():
        out = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()
               if not k.endswith('num_batches_tracked')}
        out.update({'grad/' + n: g for n, g in grads_seen.items()})
        out.update({'adam_denom_min/' + n: d.copy() for n, d in denom_min.items()})
        for o in optimizers:
            for p, st in o.state.items():
                if 'exp_avg' in st:
                    out['exp_avg/' + pname[id(p)]] = st['exp_avg'].detach().cpu().numpy().copy()
                    out['exp_avg_sq/' + pname[id(p)]] = st['exp_avg_sq'].detach().cpu().numpy().copy()
        return out

    xtr, ytr, xte, yte, batches = load_data(a.data_dir, a.steps, c['batch_size'],
                                            a.data_seed, a.n_test, c['input_size'])
    xe_all = torch.from_numpy(xte[:, None, :, :].astype(npdt))
    ye_all = torch.from_numpy(yte)

    def run_eval():
        # The reference's residual units step their projection shortcut's own optimizer
        # inside forward() (BasicBlock/Bottleneck/wide_basic: `if not args.no_detach:
        # self.optimizer.step()`). In backprop mode the training forward runs right after
        # zero_grad, so that step has no gradient and does nothing; but a test pass after a
        # training step still finds that step's gradients and applies one more Adam update
        # to every projection shortcut (once per epoch in the reference's own loop). The
        # cross-check's evaluations must not change the state: clear the gradients first.
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        model.eval()
        outs = []
        with torch.no_grad():
            for s in range(0, len(yte), a.eval_batch):
                xe, ye = xe_all[s:s + a.eval_batch], ye_all[s:s + a.eval_batch]
                out, _ = model(xe, ye, ns['to_one_hot'](ye, NUM_CLASSES))
                outs.append(out.cpu().numpy().copy())
        model.train()
        return np.concatenate(outs)

    snaps = snapshot_steps(a.steps)
    log = dict(side='torch', config=c, dtype=a.dtype, torch=torch.__version__,
               train_py_sha256=ns['_sha256'], threads=a.threads,
               args={k: getattr(args, k) for k in sorted(vars(args))}, steps=[], eval={},
               tensors=sorted(wanted), ref_only=ref_only, ref_fixes=ref_fixes)
    train_logits = []
    t0 = time.time()
    for k in range(1, a.steps + 1):
        idx = batches[k - 1]
        xb = torch.from_numpy(xtr[idx][:, None, :, :].astype(npdt))
        yb = torch.from_numpy(ytr[idx])
        if mask_feed is not None and c['dropout'] > 0:
            for key, arr in mask_arrays.items():
                mask_feed[key] = torch.from_numpy(arr[k - 1].astype(np.bool_))
        if k - 1 in snaps:
            log['eval'][k - 1] = run_eval()
        grads_seen.clear()
        recording[0] = True
        logits, loss_local, loss_global, per_block, correct = ref_train_step(
            ns, args, model, opt, blocks, xb, yb)
        recording[0] = False
        track_denominators()
        rec = dict(step=k, blocks=per_block, out_loss=loss_global, local_total=loss_local,
                   train_error=100.0 * (1 - correct / len(idx)))
        log['steps'].append(rec)
        train_logits.append(logits)
        if k in snaps:
            np.savez(os.path.join(a.out, 'state_step%d.npz' % k), **export())
        if a.verbose:
            print('torch step %d  out %.6g  %s' % (k, loss_global, [
                None if b is None else round(b['loss'], 6) for b in per_block]), flush=True)
    log['train_seconds'] = time.time() - t0
    log['eval'][a.steps] = run_eval()
    eval_steps = sorted(log['eval'])
    np.savez(os.path.join(a.out, 'eval_logits.npz'),
             **{'step%d' % s: log['eval'][s] for s in eval_steps}, labels=yte)
    log['eval'] = {s: 100.0 * float(np.mean(log['eval'][s].argmax(1) != yte))
                   for s in eval_steps}
    np.save(os.path.join(a.out, 'train_logits.npy'), np.stack(train_logits))
    np.savez(os.path.join(a.out, 'init_loaded.npz'), **{k: z[k] for k in z.files})
    with open(os.path.join(a.out, 'log.json'), 'w') as f:
        json.dump(log, f, indent=1, default=str)
    print('torch side done: %s (%.1f s train)' % (a.out, log['train_seconds']))


# --------------------------------------------------------------------------- compare
def _sd(a, b):
    """abs and relative difference of scalars (relative to the reference b)."""
    d = abs(a - b)
    return d, (d / abs(b) if b != 0 else (0.0 if d == 0 else float('inf')))


def tensor_diff(a, b, b0=None):
    import numpy as np
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    d = np.abs(a - b)
    mb = float(np.max(np.abs(b))) if b.size else 0.0
    r = dict(max_abs=float(d.max()) if d.size else 0.0,
             rel_inf=float(d.max() / mb) if mb > 0 else float(d.max() > 0),
             rel_l2=float(np.linalg.norm(a - b) / np.linalg.norm(b)) if np.linalg.norm(b) > 0
             else float(np.linalg.norm(a - b) > 0))
    if b0 is not None:
        upd = np.linalg.norm(b - np.asarray(b0, np.float64))
        r['rel_to_update'] = float(np.linalg.norm(a - b) / upd) if upd > 0 else (
            0.0 if np.linalg.norm(a - b) == 0 else float('inf'))
    return r


# Adam's eps (PyTorch's and optax's default) and the eps regime: an entry whose Adam
# denominator sqrt(v_hat_t) (the bias-corrected root mean square of its gradients, from the
# reference's optimizer state) fell below EPS_REGIME at some step up to a snapshot. Such an
# entry's gradient is tiny (<= 1e-6; its float64 rounding, about 1e-15 absolute in these
# models, is then >= 1e-9 of it), and Adam turns it into an update of comparable size to
# every other entry's (lr * m_hat / (sqrt(v_hat) + eps)), so its rounding moves the
# parameter by up to lr * (rounding) / eps (docs/crosscheck.md, "Adam on near-zero
# gradients"). `compare` reports these entries apart from the rest, and the raw maximum.
ADAM_EPS = 1e-8
EPS_REGIME = 100 * ADAM_EPS
DENOM = 'adam_denom_min/'  # the torch side's per-entry minimum of sqrt(v_hat_t)
# band edges of that minimum for the breakdown (`bands`): < 1e-8, [1e-8, 1e-7), ..., >= 1e-4
DENOM_BANDS = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4)


def is_trained(key):
    """A trained tensor of the state (not a moment, gradient or BatchNorm statistic)."""
    return not (key.startswith(('exp_avg', 'grad/', DENOM))
                or key.endswith(('running_mean', 'running_var')))


def split_entries(a, b, denom):
    """Differences of one trained tensor (test a, reference b), relative to max|b| as
    everywhere (inf-norm), apart for the entries in Adam's eps regime (`denom` < EPS_REGIME;
    None: no Adam state, e.g. SGD or a tensor no optimizer holds) and the rest."""
    import numpy as np
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    d = np.abs(a - b)
    mb = float(np.max(np.abs(b))) if b.size else 0.0
    flag = np.zeros(b.shape, bool) if denom is None else np.asarray(denom) < EPS_REGIME
    scale = mb if mb > 0 else 1.0
    rest, eps = d[~flag], d[flag]
    out = dict(n=int(b.size), n_eps=int(flag.sum()),
               rel_inf_rest=float(rest.max() / scale) if rest.size else 0.0,
               rel_inf_eps=float(eps.max() / scale) if eps.size else None)
    if denom is not None:  # by the size of the Adam denominator: [count, max rel] per band
        band = np.searchsorted(np.asarray(DENOM_BANDS), np.asarray(denom), side='right')
        out['bands'] = [[int(np.sum(band == i)),
                         float(d[band == i].max() / scale) if np.any(band == i) else None]
                        for i in range(len(DENOM_BANDS) + 1)]
    return out


def update_image_residual(theta_t, theta_r, g_t, g_r, theta0, optim, lr):
    """After step 1 (both sides from the same theta0): the parameter difference minus the
    optimizer's image of the gradient difference, max abs relative to max|theta_r|. Adam's
    first update is lr * g / (|g| + eps) (m_hat = g, sqrt(v_hat) = |g|), SGD's lr * g; a
    residual at rounding level (~1e-16) says that the parameters differ only because the
    gradients do, by the optimizer's own arithmetic."""
    import numpy as np
    f = np.float64
    g_t, g_r = np.asarray(g_t, f), np.asarray(g_r, f)
    if optim == 'sgd':
        pred = -lr * (g_t - g_r)
    else:
        pred = -lr * (g_t / (np.abs(g_t) + ADAM_EPS) - g_r / (np.abs(g_r) + ADAM_EPS))
    obs = np.asarray(theta_t, f) - np.asarray(theta_r, f)
    mb = float(np.max(np.abs(np.asarray(theta_r, f))))
    del theta0  # the same on both sides (init.npz)
    return float(np.max(np.abs(obs - pred)) / (mb if mb > 0 else 1.0))


def band_text(bands):
    edges = ['%g' % e for e in DENOM_BANDS]
    names = ['< ' + edges[0]] + ['%s-%s' % (lo, hi) for lo, hi in zip(edges, edges[1:])] + [
        '>= ' + edges[-1]]
    return ', '.join('%s: %d, %s' % (nm, n, fmt(m)) for nm, (n, m) in zip(names, bands))


def fmt(x):
    if x is None:
        return '-'
    if isinstance(x, str):
        return x
    if x == 0:
        return '0'
    if abs(x) >= 1e-3 and abs(x) < 1e4:
        return '%.6f' % x
    return '%.3e' % x


def cmd_compare(a):
    import numpy as np
    R = json.load(open(os.path.join(a.ref, 'log.json')))
    T = json.load(open(os.path.join(a.test, 'log.json')))
    os.makedirs(a.out, exist_ok=True)
    res = dict(ref=a.ref, test=a.test, ref_side=R['side'], test_side=T['side'],
               ref_dtype=R['dtype'], test_dtype=T['dtype'], steps=[], tensors={}, eval={},
               entries={}, adam_image={})
    n = min(len(R['steps']), len(T['steps']))
    nb = len(R['steps'][0]['blocks'])
    # per step scalars
    for k in range(n):
        r, t = R['steps'][k], T['steps'][k]
        row = dict(step=k + 1)
        row['out_loss'] = (r['out_loss'], t['out_loss']) + _sd(t['out_loss'], r['out_loss'])
        for i in range(nb):
            rb, tb = r['blocks'][i], t['blocks'][i]
            if rb is None or tb is None:
                continue
            for q in ('pred', 'sim', 'loss'):
                if rb.get(q) is None or tb.get(q) is None:
                    continue
                row['b%d_%s' % (i, q)] = (rb[q], tb[q]) + _sd(tb[q], rb[q])
        res['steps'].append(row)
    # train logits per step
    lr_ = np.load(os.path.join(a.ref, 'train_logits.npy'))
    lt_ = np.load(os.path.join(a.test, 'train_logits.npy'))
    res['train_logits_max_abs'] = [float(np.max(np.abs(lr_[k].astype(np.float64) - lt_[k])))
                                   for k in range(n)]
    # tensors at the snapshots
    init_r = np.load(os.path.join(a.ref, 'init_loaded.npz')) if os.path.exists(
        os.path.join(a.ref, 'init_loaded.npz')) else np.load(os.path.join(a.ref, 'init.npz'))
    for s in snapshot_steps(n):
        if s == 0:
            continue
        fr = os.path.join(a.ref, 'state_step%d.npz' % s)
        ft = os.path.join(a.test, 'state_step%d.npz' % s)
        if not (os.path.exists(fr) and os.path.exists(ft)):
            continue
        zr, zt = np.load(fr), np.load(ft)
        keys = sorted(k for k in set(zr.files) | set(zt.files) if not k.startswith(DENOM))
        rows = {}
        denoms = {k[len(DENOM):]: zr[k] for k in zr.files if k.startswith(DENOM)}
        res['entries'][s] = {key: split_entries(zt[key], zr[key], denoms.get(key))
                             for key in keys if is_trained(key) and key in zt.files
                             and key in zr.files}
        if s == 1:
            res['adam_image'] = {key: update_image_residual(
                zt[key], zr[key], zt['grad/' + key], zr['grad/' + key], init_r[key],
                R['config']['optim'], R['config']['lr'])
                for key in res['entries'][s] if 'grad/' + key in zt.files
                and 'grad/' + key in zr.files and key in init_r.files}
        for key in keys:
            if key not in zr.files or key not in zt.files:
                rows[key] = dict(missing='ref' if key not in zr.files else 'test')
                continue
            base = key.split('/', 1)[-1]
            b0 = init_r[base] if (key == base and base in init_r.files) else None
            if key.startswith('exp_avg'):
                b0 = np.zeros_like(zr[key])
            rows[key] = tensor_diff(zt[key], zr[key], b0)
            if key.startswith('grad/') and key.endswith(PRE_BN_BIAS):
                v = res.setdefault('pre_bn_grad_abs', {}).setdefault(str(s), [0.0, 0.0])
                v[0] = max(v[0], float(np.max(np.abs(zr[key]))))
                v[1] = max(v[1], float(np.max(np.abs(zt[key]))))
        res['tensors'][s] = rows
    # eval
    er = np.load(os.path.join(a.ref, 'eval_logits.npz'))
    et = np.load(os.path.join(a.test, 'eval_logits.npz'))
    labels = er['labels']
    for key in er.files:
        if key == 'labels' or key not in et.files:
            continue
        lr_e, lt_e = er[key].astype(np.float64), et[key].astype(np.float64)
        pr, pt = lr_e.argmax(1), lt_e.argmax(1)
        res['eval'][key] = dict(
            ref_error=100.0 * float(np.mean(pr != labels)),
            test_error=100.0 * float(np.mean(pt != labels)),
            argmax_disagree=int(np.sum(pr != pt)),
            logits_max_abs=float(np.max(np.abs(lr_e - lt_e))),
            logits_rel_inf=float(np.max(np.abs(lr_e - lt_e)) / np.max(np.abs(lr_e))))
    res['summary'] = summarize(res, R, T)
    with open(os.path.join(a.out, 'compare.json'), 'w') as f:
        json.dump(res, f, indent=1)
    md = render_markdown(res, R, T, a.steps_shown)
    with open(os.path.join(a.out, 'compare.md'), 'w') as f:
        f.write(md)
    print(md)
    sm = res['summary']
    print('SUMMARY %s %s/%s steps=%d  local+output losses max rel %s | params max rel %s '
          '(l2 %s) | '
          'Adam moments max rel %s | pre-BN biases max abs %s (rel %s) | BN running_mean %s '
          'running_var %s | train logits max abs %s | eval logits rel %s%s' % (
              sm['config'], sm['test_dtype'], sm['ref_dtype'], sm['steps'],
              fmt(sm['loss_rel_max']), fmt(sm['param_rel_max']), fmt(sm['param_rel_l2_max']),
              fmt(sm['moment_rel_max']), fmt(sm['pre_bn_bias_abs_max']), fmt(sm['pre_bn_bias_rel_max']),
              fmt(sm['running_mean_rel_max']), fmt(sm['running_var_rel_max']),
              fmt(sm['train_logits_max_abs']), fmt(sm['eval_logits_rel_max']),
              ('  [reference patched: %s]' % '; '.join(sm['ref_fixes'])) if sm['ref_fixes'] else ''))
    print('SUMMARY2 %s %s: step-1 gradients max rel %s (all snapshots %s) | trained tensors '
          'raw max rel %s; Adam eps regime (sqrt(v_hat) < %g at some step): %d of %d entries, '
          'max rel %s; the rest max rel %s | step-1 parameter difference minus the optimizer\'s '
          'image of the gradient difference %s | pre-BN bias gradients max abs ref %s test %s | '
          'parameter difference relative to the update (l2) max %s' % (
              sm['config'], sm['optim'], fmt(sm['grad_rel_step1_max']), fmt(sm['grad_rel_max']),
              fmt(sm['param_rel_raw_max']), EPS_REGIME, sm['eps_regime_entries'],
              sm['trained_entries'], fmt(sm['param_rel_eps_regime_max']),
              fmt(sm['param_rel_rest_max']), fmt(sm['step1_update_image_residual']),
              fmt(sm['pre_bn_grad_abs_max_ref']), fmt(sm['pre_bn_grad_abs_max_test']),
              fmt(sm['param_rel_to_update_max'])))
    if sm['denom_bands']:
        print('SUMMARY3 %s: trained-tensor entries by their smallest Adam denominator '
              'sqrt(v_hat), [entries, max rel]: %s' % (sm['config'], band_text(sm['denom_bands'])))


# conv/linear biases whose output only a BatchNorm reads (true gradient 0): every block's
# encoder.bias in the reference's models (MLP and VGG blocks, the Wide ResNets'
# convolutions) and the Wide ResNets' projection shortcut bias (added to a conv output that
# the next BatchNorm normalises); the ResNets' convolutions have no bias
PRE_BN_BIAS = ('encoder.bias', 'shortcut.0.bias')


def summarize(res, R, T):
    """The largest differences of a comparison: scalar losses (every block's pred/sim/loss
    and the output loss, all steps, relative to the reference's value), trained tensors
    (relative inf-norm, max|a-b| / max|b|, and relative l2, |a-b| / |b|, every snapshot),
    Adam moments, BatchNorm running
    statistics (mean and var apart: localjax's running var is the biased one, see
    docs/crosscheck.md), logits. The biases in front of a BatchNorm (`PRE_BN_BIAS`) and
    their Adam moments are kept apart: their true gradient is 0, so both sides update them
    by Adam steps of rounding noise (tiny in absolute terms, and their moments differ
    entirely). Tensors only one side has are not counted."""
    loss = max((v[3] for row in res['steps'] for q, v in row.items() if q != 'step'),
               default=0.0)
    par = par_l2 = mom = rmean = rvar = pre_bn_abs = pre_bn_rel = 0.0
    grad1 = grad = par_upd = 0.0
    pre_bn_grad = [0.0, 0.0]  # max |gradient| of the pre-BN biases: reference, test
    for s, rows in res['tensors'].items():
        for key, d in rows.items():
            if 'missing' in d:
                continue
            r = d['rel_inf']
            if key.startswith('grad/'):
                if key.endswith(PRE_BN_BIAS):  # analytically zero: both sides' are noise
                    continue
                grad = max(grad, r)
                if int(s) == 1:
                    grad1 = max(grad1, r)
            elif key.endswith(PRE_BN_BIAS):
                # a bias right before a BatchNorm: its true gradient is 0, each side's is
                # rounding noise, which Adam divides by sqrt(v) + eps (noise / 1e-8)
                if not key.startswith('exp_avg'):
                    pre_bn_rel = max(pre_bn_rel, r)
                    pre_bn_abs = max(pre_bn_abs, d['max_abs'])
            elif key.startswith('exp_avg'):
                mom = max(mom, r)
            elif key.endswith('running_mean'):
                rmean = max(rmean, r)
            elif key.endswith('running_var'):
                rvar = max(rvar, r)
            else:
                par = max(par, r)
                par_l2 = max(par_l2, d['rel_l2'])
                if d.get('rel_to_update') is not None:
                    par_upd = max(par_upd, d['rel_to_update'])
    # the pre-BN biases' gradients, both sides, every snapshot (grad_abs: see cmd_compare)
    for v in res.get('pre_bn_grad_abs', {}).values():
        pre_bn_grad = [max(pre_bn_grad[0], v[0]), max(pre_bn_grad[1], v[1])]
    # trained tensors, entry by entry: the raw maximum (pre-BN biases included), and apart
    # for the entries in Adam's eps regime and the rest (pre-BN biases excluded)
    raw = rest = 0.0
    eps_rel = None
    n_eps = n_all = 0
    for s, rows in res.get('entries', {}).items():
        ne = na = 0
        for key, d in rows.items():
            raw = max(raw, d['rel_inf_rest'], d['rel_inf_eps'] or 0.0)
            if key.endswith(PRE_BN_BIAS):
                continue
            rest = max(rest, d['rel_inf_rest'])
            if d['rel_inf_eps'] is not None:
                eps_rel = max(eps_rel or 0.0, d['rel_inf_eps'])
            ne += d['n_eps']
            na += d['n']
        n_eps, n_all = max(n_eps, ne), max(n_all, na)
    bands = None
    for rows in res.get('entries', {}).values():
        for key, d in rows.items():
            if key.endswith(PRE_BN_BIAS) or 'bands' not in d:
                continue
            if bands is None:
                bands = [[0, None] for _ in d['bands']]
            for agg, (_, m) in zip(bands, d['bands']):
                if m is not None:
                    agg[1] = m if agg[1] is None else max(agg[1], m)
    if bands is not None:  # entry counts: at the last snapshot (the minimum only falls)
        last = res['entries'][max(res['entries'], key=int)]
        for i, agg in enumerate(bands):
            agg[0] = sum(d['bands'][i][0] for k, d in last.items()
                         if 'bands' in d and not k.endswith(PRE_BN_BIAS))
    image = max(res.get('adam_image', {}).values(), default=None)
    c = R['config']
    overrides = ' '.join('%s=%s' % (k, c[k]) for k in sorted(c)
                         if k != 'name' and c[k] != make_config(c['name']).get(k))
    return dict(config=c['name'] + (' (%s)' % overrides if overrides else ''),
                ref_dtype=res['ref_dtype'],
                test_dtype=res['test_dtype'], steps=len(res['steps']), loss_rel_max=loss,
                param_rel_max=par, param_rel_l2_max=par_l2, moment_rel_max=mom, pre_bn_bias_rel_max=pre_bn_rel,
                pre_bn_bias_abs_max=pre_bn_abs, running_mean_rel_max=rmean,
                running_var_rel_max=rvar,
                train_logits_max_abs=max(res['train_logits_max_abs'], default=0.0),
                eval_logits_rel_max=max((d['logits_rel_inf'] for d in res['eval'].values()),
                                        default=0.0),
                eval_argmax_disagree=max((d['argmax_disagree'] for d in res['eval'].values()),
                                         default=0),
                ref_only=R.get('ref_only', []), ref_fixes=R.get('ref_fixes', []),
                optim=c['optim'], lr=c['lr'],
                grad_rel_step1_max=grad1, grad_rel_max=grad,
                pre_bn_grad_abs_max_ref=pre_bn_grad[0], pre_bn_grad_abs_max_test=pre_bn_grad[1],
                param_rel_to_update_max=par_upd,
                param_rel_raw_max=raw, param_rel_rest_max=rest, param_rel_eps_regime_max=eps_rel,
                eps_regime_entries=n_eps, trained_entries=n_all, denom_bands=bands,
                step1_update_image_residual=image)


def render_markdown(res, R, T, steps_shown):
    lines = []
    c = R['config']
    lines.append('### %s: %s (%s) vs %s (%s)\n' % (c['name'], res['test_side'], res['test_dtype'],
                                                   res['ref_side'], res['ref_dtype']))
    lines.append('config: ' + ', '.join('%s=%s' % (k, c[k]) for k in
                 ('model', 'loss', 'nonlin', 'beta', 'bio', 'num_layers', 'num_hidden',
                  'feat_mult', 'dim_in_decoder', 'dropout', 'lr', 'batch_size',
                  'input_size') if k in c) + '\n')
    sm = res.get('summary')
    if sm:
        lines.append('summary: local+output losses max rel %s; params max rel %s (l2 %s); Adam '
                     'moments max rel %s; pre-BN biases max abs %s (rel %s); BN running_mean max rel '
                     '%s, running_var max rel %s; train logits max abs %s; eval logits max rel '
                     '%s (argmax disagreements %d)\n' % (
                         fmt(sm['loss_rel_max']), fmt(sm['param_rel_max']),
                         fmt(sm['param_rel_l2_max']), fmt(sm['moment_rel_max']), fmt(sm['pre_bn_bias_abs_max']),
                         fmt(sm['pre_bn_bias_rel_max']), fmt(sm['running_mean_rel_max']),
                         fmt(sm['running_var_rel_max']), fmt(sm['train_logits_max_abs']),
                         fmt(sm['eval_logits_rel_max']), sm['eval_argmax_disagree']))
        lines.append('gradients (%s): step 1 max rel %s, all snapshots %s; trained tensors: raw '
                     'max rel %s; entries in Adam\'s eps regime (sqrt(v_hat) < %g at some step): '
                     '%d of %d, max rel %s; the rest: max rel %s; step-1 parameter difference '
                     'minus the optimizer\'s image of the gradient difference: %s; pre-BN bias '
                     'gradients max abs: reference %s, test %s\n' % (
                         sm['optim'], fmt(sm['grad_rel_step1_max']), fmt(sm['grad_rel_max']),
                         fmt(sm['param_rel_raw_max']), EPS_REGIME, sm['eps_regime_entries'],
                         sm['trained_entries'], fmt(sm['param_rel_eps_regime_max']),
                         fmt(sm['param_rel_rest_max']), fmt(sm['step1_update_image_residual']),
                         fmt(sm['pre_bn_grad_abs_max_ref']), fmt(sm['pre_bn_grad_abs_max_test'])))
        if sm['denom_bands']:
            lines.append('trained-tensor entries by their smallest Adam denominator sqrt(v_hat) '
                         '(pre-BN biases apart), [entries, max rel]: %s\n'
                         % band_text(sm['denom_bands']))
        if sm['ref_fixes']:
            lines.append('reference patched (BasicBlock dim_out): ' + '; '.join(sm['ref_fixes'])
                         + '\n')
        if sm['ref_only']:
            lines.append('reference-only tensors, left at their construction values: '
                         + ', '.join(sm['ref_only']) + '\n')
    n = len(res['steps'])
    shown = sorted({s for s in steps_shown if 1 <= s <= n} | {1, n})
    lines.append('| step | quantity | reference | %s | abs diff | rel diff |' % res['test_side'])
    lines.append('|---|---|---|---|---|---|')
    for s in shown:
        row = res['steps'][s - 1]
        for q, v in row.items():
            if q == 'step':
                continue
            lines.append('| %d | %s | %s | %s | %s | %s |' % (s, q, fmt(v[0]), fmt(v[1]),
                                                              fmt(v[2]), fmt(v[3])))
        lines.append('| %d | train logits (max abs diff) | | | %s | |' % (
            s, fmt(res['train_logits_max_abs'][s - 1])))
    # worst rel diff per step over all scalars
    worst = []
    for row in res['steps']:
        w = max((v[3] for q, v in row.items() if q != 'step'), default=0.0)
        worst.append(w)
    lines.append('')
    lines.append('max scalar rel diff per step (steps 1..%d): %s' % (
        n, ' '.join('%.1e' % w for w in worst)))
    lines.append('')
    for s, rows in sorted(res['tensors'].items(), key=lambda kv: int(kv[0])):
        lines.append('#### tensors after step %s\n' % s)
        lines.append('| tensor | max abs | rel (inf) | rel (l2) | rel to update |')
        lines.append('|---|---|---|---|---|')
        for key, d in rows.items():
            if 'missing' in d:
                lines.append('| %s | missing in %s | | | |' % (key, d['missing']))
                continue
            lines.append('| %s | %s | %s | %s | %s |' % (key, fmt(d['max_abs']), fmt(d['rel_inf']),
                                                      fmt(d['rel_l2']),
                                                      fmt(d.get('rel_to_update'))))
        lines.append('')
    lines.append('#### eval (%d test images, eval mode)\n' % R.get('n_test', 0) if False else
                 '#### eval (test images, eval mode)\n')
    lines.append('| after step | ref error % | test error % | argmax disagreements | logits max abs | logits rel (inf) |')
    lines.append('|---|---|---|---|---|---|')
    for key, d in sorted(res['eval'].items(), key=lambda kv: int(kv[0][4:])):
        lines.append('| %s | %.2f | %.2f | %d | %s | %s |' % (key[4:], d['ref_error'], d['test_error'],
                                                           d['argmax_disagree'],
                                                           fmt(d['logits_max_abs']),
                                                           fmt(d['logits_rel_inf'])))
    lines.append('')
    return '\n'.join(lines)


# --------------------------------------------------------------------------- run
def cmd_run(a):
    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    c = make_config(a.config, a.set)
    common = ['--config', a.config, '--steps', str(a.steps), '--data-dir', a.data_dir,
              '--data-seed', str(a.data_seed), '--n-test', str(a.n_test),
              '--eval-batch', str(a.eval_batch)]
    for s in a.set:
        common += ['--set', s]
    me = os.path.abspath(__file__)
    jdir, tdir = os.path.join(work, 'jax'), os.path.join(work, 'torch')
    cmds = []
    jax_extra = ['--dtype', a.dtype]
    init_npz = os.path.join(jdir, 'init.npz')
    lj_path = a.localjax_path
    if a.unbiased_bn and lj_path is not None:
        raise SystemExit('--unbiased-bn with --localjax-path: patch that copy yourself')
    if lj_path is None and (a.dtype == 'float64' or a.unbiased_bn):
        src = os.path.join(a.localjax_src, 'localjax')
        lj_path = os.path.join(work, 'lj_' + a.dtype + ('_unbiased' if a.unbiased_bn else ''))
        cmds.append([a.jax_python, os.path.join(HERE, 'make_patched.py'), '--src', src,
                     '--dst', lj_path] + (['--f64'] if a.dtype == 'float64' else []) +
                    (['--unbiased-bn'] if a.unbiased_bn else []))
    src_path = os.path.abspath(a.localjax_src)  # the unpatched localjax: --localjax-src
    jax_extra += ['--localjax-path', lj_path or src_path]
    if a.dtype == 'float64':
        # the float32 initial state (the unpatched localjax's own init), loaded by both sides
        init_npz = os.path.join(work, 'init32', 'init.npz')
        cmds.append([a.jax_python, me, 'jax', '--out', os.path.join(work, 'init32'),
                     '--init-only', '--init-seed', str(a.init_seed),
                     '--localjax-path', src_path] + common)
        jax_extra += ['--init-npz', init_npz]
    cmds += [[a.jax_python, me, 'jax', '--out', jdir, '--step-impl', a.step_impl,
              '--init-seed', str(a.init_seed)] + jax_extra + common,
             [a.torch_python, me, 'torch', '--out', tdir, '--init-npz',
              init_npz, '--train-py', a.train_py, '--dtype', a.dtype,
              '--threads', str(a.threads)] + common + (
                 ['--dropout-masks', os.path.join(jdir, 'dropout_masks.npz')]
                 if c['dropout'] > 0 else []),
             [sys.executable, me, 'compare', '--ref', tdir, '--test', jdir, '--out',
              os.path.join(work, 'compare')]]
    for cmd in cmds:
        print('+', ' '.join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='cmd', required=True)

    def common(p):
        p.add_argument('--config', required=True)
        p.add_argument('--set', action='append', default=[])
        p.add_argument('--steps', type=int, default=100)
        p.add_argument('--data-dir', default=DEFAULT_DATA)
        p.add_argument('--data-seed', type=int, default=0)
        p.add_argument('--n-test', type=int, default=2000)
        p.add_argument('--eval-batch', type=int, default=1000)
        p.add_argument('--verbose', action='store_true')

    j = sub.add_parser('jax')
    common(j)
    j.add_argument('--out', required=True)
    j.add_argument('--init-seed', type=int, default=0)
    j.add_argument('--init-npz', default=None, help='load the initial state from this file')
    j.add_argument('--dtype', default='float32', choices=['float32', 'float64'])
    j.add_argument('--localjax-path', default=None,
                   help='put this folder first on sys.path (a patched localjax copy)')
    j.add_argument('--step-impl', default='fused', choices=['fused', 'reference'])
    j.add_argument('--init-only', action='store_true',
                   help='write init.npz (the initial state in the reference layout) and stop')

    t = sub.add_parser('torch')
    common(t)
    t.add_argument('--out', required=True)
    t.add_argument('--init-npz', required=True)
    t.add_argument('--train-py', default=DEFAULT_TRAIN_PY)
    t.add_argument('--dtype', default='float32', choices=['float32', 'float64'])
    t.add_argument('--threads', type=int, default=1)
    t.add_argument('--dropout-masks', default=None,
                   help='dropout > 0: apply these masks (the jax side\'s dropout_masks.npz)')

    c = sub.add_parser('compare')
    c.add_argument('--ref', required=True)
    c.add_argument('--test', required=True)
    c.add_argument('--out', required=True)
    c.add_argument('--steps-shown', type=lambda s: [int(x) for x in s.split(',')],
                   default=[1, 2, 10, 100])

    r = sub.add_parser('run')
    common(r)
    r.add_argument('--work', required=True)
    r.add_argument('--init-seed', type=int, default=0)
    r.add_argument('--step-impl', default='fused', choices=['fused', 'reference'])
    r.add_argument('--train-py', default=DEFAULT_TRAIN_PY)
    r.add_argument('--threads', type=int, default=1)
    r.add_argument('--jax-python', default=JAX_PY)
    r.add_argument('--torch-python', default=TORCH_PY)
    r.add_argument('--dtype', default='float32', choices=['float32', 'float64'],
                   help='float64: both sides in float64 from the float32 initial state, with '
                        'a float64 copy of localjax (make_patched.py --f64) under WORK')
    r.add_argument('--unbiased-bn', action='store_true',
                   help='localjax copy whose BatchNorms are TorchBatchNorm (unbiased running '
                        'variance, as PyTorch): the eval logits then agree too')
    r.add_argument('--localjax-path', default=None,
                   help='use this patched localjax copy (its parent folder) instead of making one')
    r.add_argument('--localjax-src', default=REPO,
                   help='the folder whose localjax/ is run (the initial state, float32) and '
                        'copied for the patched copies (e.g. a `git archive` of one commit)')

    sub.add_parser('list')
    a = ap.parse_args(argv)
    if a.cmd == 'list':
        for k in CONFIGS:
            print(k, make_config(k))
        return
    {'jax': cmd_jax, 'torch': cmd_torch, 'compare': cmd_compare, 'run': cmd_run}[a.cmd](a)


if __name__ == '__main__':
    main()
