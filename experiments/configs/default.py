"""Base configuration shared by every recipe; fields documented inline (docs/experiments.md
says how to run and override them).

python -m experiments.train --config=experiments/configs/default.py --workdir=/tmp/run
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # data
    c.dataset = "fashion_mnist"
    c.data_dir = ""  # "" = the dataset's default location
    c.data_source = "auto"  # auto (files, else .npz cache, else TFDS) | files | tfds
    c.train_limit = 0  # use only the first N training examples; 0 = all
    c.test_limit = 0  # evaluate on the first N test examples only; 0 = all (quick runs)
    # where the data lives during training (docs/datasets.md, "ImageNet, image folders
    # and streaming"):
    # auto = on the device when its uint8 training images take <= 4 GiB, else streamed
    c.data_pipeline = "auto"  # auto | memory (on device, augmented in the step) | stream
    c.image_size = 0  # px of any-size (JPEG) datasets' crops; 0 = the dataset's (ImageNet 224)
    c.data_workers = 0  # streamed: grain worker processes decoding; 0 = threads of this process
    c.data_prefetch = 2  # streamed: batches read ahead (per worker)
    c.max_bad_fraction = 0.001  # streamed: stop once more than this fraction of files is corrupt
    c.checkpoint_every_steps = 0  # streamed: also checkpoint within an epoch every N steps
    # network
    c.model = "mlp"  # mlp | vgg8b | vgg11b | ... | resnet18 ... resnet152 | wresnet28-10 | ...
    c.loss = "predsim"  # pred | sim | predsim | backprop
    c.num_layers = 3
    c.num_hidden = 1024
    c.feat_mult = 1.0
    c.nonlin = "leakyrelu"
    c.dropout = 0.0
    c.dim_in_decoder = 4096
    c.beta = 0.99
    c.bio = False
    c.target_proj_size = 128
    c.unsup = "none"  # none | sim | recon
    c.alpha = 0.0
    c.similarity_std = True  # False: the reference's --no-similarity-std
    c.pre_act = False  # ResNets: pre-activation units (the reference's --pre-act)
    # (Wide) ResNets' final pool: reference = the reference's 4x4 average pool (Wide
    # ResNets: 8x8, adapted 2x2 max) flattened into the output layer, sized for 32 px |
    # global = the mean over H and W, the standard ImageNet head (output layer on
    # 512 x expansion features, Wide ResNets 64k, at any input size)
    c.final_pool = "reference"
    c.no_batch_norm = False  # the reference's --no-batch-norm: no BatchNorm in the blocks
    c.detach = True  # False: deep supervision
    c.dtype = "float32"  # float32 | bfloat16 (compute; parameters stay float32)
    # conv weight gradients: auto = shifted matmuls on CPU (~2x faster VGG steps there,
    # 2x scratch memory), XLA's elsewhere | xla | shifted (docs/performance.md)
    c.conv_wgrad = "auto"
    # optimisation (lr x lr_decay at each milestone epoch), the reference's --optim switches
    c.optim = "adam"  # adam | amsgrad | sgd (PyTorch's update rules)
    c.momentum = 0.0  # sgd only
    c.weight_decay = 0.0  # PyTorch's: wd * param added to every gradient (BatchNorm included)
    c.lr = 5e-4
    c.lr_decay = 0.25
    c.milestones = (100, 150, 175, 188)
    c.epochs = 200
    c.batch_size = 128
    c.seed = 0
    # run
    c.eval_batch_size = 1000
    c.progress_bar = True
    c.sync_every = 16  # wait on a step result this often (bounds queued async steps)
    c.cutout_length = 0  # side of the cutout hole in px; 0 = off
    c.n_holes = 1  # cutout holes per image (the reference's --n_holes)
    # classes-per-batch sampler (CIFAR-100 sim/predsim recipes): batches of about this many
    # distinct classes while epoch <= classes_per_batch_until_epoch (0 = whole run)
    c.classes_per_batch = 0  # 0 = plain shuffling
    c.classes_per_batch_until_epoch = 0
    c.row = ""  # recipe row name (set by the per-dataset config files)
    c.published_error = ml_collections.FieldReference(None, field_type=float)
    # scale and safety (docs/scaling.md)
    c.num_devices = 0  # devices in the ('data',) mesh; 0 = every device of every process
    # pipeline (docs/pipeline.md): the blocks cut into stages on different devices, the same
    # numbers as the fused step; devices form a (pipeline_stages x data) mesh
    c.pipeline_stages = 1  # 1 = the fused step, data parallel over every device
    c.pipeline_cuts = ()  # first block index of each stage after the first; () = FLOP-balanced
    c.checkpoint_every = 1  # epochs between checkpoints (one is always written at the end)
    c.keep = 3  # newest checkpoints retained in WORKDIR/checkpoints
    c.coordinator_address = ""  # host:port of process 0; "" = $JAX_COORDINATOR_ADDRESS or none
    c.num_processes = 0  # processes in a multi-host run; 0 = $JAX_NUM_PROCESSES / auto-detect
    c.process_id = -1  # this process's id; -1 = $JAX_PROCESS_ID / auto-detect
    return c
