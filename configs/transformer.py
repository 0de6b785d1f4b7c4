"""GPT-style Transformer on the embedded byte corpus (the default job).

    python -m hptransfer.train --config configs/transformer.py --workdir runs/tfm
    python -m hptransfer.describe --config configs/transformer.py --config.model.width=512

Every key below is part of the config contract shared by sweeps, docs and
analysis; override any of them with ``--config.<dotted.key>=value``.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                          # parameter-init seed

  c.task = ml_collections.ConfigDict()
  c.task.name = "lm"                  # lm (next-token) | classification

  c.model = ml_collections.ConfigDict()
  c.model.name = "transformer"        # a registered model: transformer | mlp | mixer
  c.model.module = ""                 # or your own: "my_pkg.models:make_model", a
                                      #   factory make_model(width, ...) -> nn.Module
  c.model.width = 128                 # d_model
  c.model.depth = 2                   # number of residual blocks
  c.model.head_dim = 32               # heads = width // head_dim
  c.model.mlp_ratio = 4.0             # MLP hidden = mlp_ratio * width
  c.model.norm = "rmsnorm"            # rmsnorm | layernorm (pre-norm)
  c.model.activation = "gelu"         # gelu | relu | silu | tanh
  c.model.use_bias = False            # biases in dense layers (and LayerNorm)
  c.model.qk_norm = False             # RMSNorm on queries and keys per head
  c.model.z_loss = 0.0                # coefficient of log(Z)^2 in the loss
  c.model.dropout = 0.0               # dropout rate (a vmapped value; 0: off)
  c.model.compute_dtype = "float32"   # float32 | bfloat16 (params stay float32)
  c.model.matmul_dtype = ""           # "" (the compute dtype) | bfloat16: dense layers'
                                      # operands in bf16, f32 accumulation, activations
                                      # in the compute dtype (hptransfer/models/lowp.py)
  c.model.attention = "auto"          # auto (blocked on CPU, xla elsewhere) | xla |
                                      #   blocked | cudnn (fused kernel: GPU, bfloat16)
  c.model.attention_block = 64        # blocked: query block; skips the masked
                                      #   upper triangle

  c.parameterization = ml_collections.ConfigDict()
  c.parameterization.name = "mup"     # sp | mup | ntk | mf | umup (u-muP: unit init and
                                      #   ops, absolute-scale rules, no base shape)
  c.parameterization.base_width = 64  # width at which every rule equals SP
  c.parameterization.base_depth = 2   # depth at which depth rules are identity
  c.parameterization.base_head_dim = 0  # 0: model.head_dim (muP's 1/d anchor)
  c.parameterization.alpha = 0.0      # branch mult (depth/base_depth)^-alpha:
                                      #   0 muP, 0.5 Depth-muP, 1 CompleteP
  c.parameterization.init_std = 1.0   # global sigma: matrices N(0, sigma^2/fan_in),
                                      #   embedding tables N(0, sigma^2)
  c.parameterization.output_mult = 1.0  # readout forward multiplier
  c.parameterization.embed_mult = 1.0   # embedding forward multiplier
  c.parameterization.embed_lr_mult = 1.0  # embedding tables' LR multiplier
  c.parameterization.attn_mult = 1.0    # multiplies the attention-logit scale
  c.parameterization.zero_init_readout = False
  c.parameterization.zero_init_query = False
  c.parameterization.query_regex = r"(^|/)query/kernel$"  # what zero_init_query zeroes
  c.parameterization.block_regex = r"(^|/)block_\d+/"     # leaves in residual blocks
  c.parameterization.role_rules = ()  # ((regex, role), ...) overriding inference
  c.parameterization.eps_rule = "none"  # Adam epsilon across width: none (microsoft/mup)
                                      #   | width (hidden x 1/m_in) | completep (every leaf
                                      #   x m_width^-1 m_depth^-alpha)
  c.parameterization.residual_mult = 1.0  # umup only: residual branches' weight against
                                      #   the embedding (alpha_res)
  c.parameterization.residual_attn_ratio = 1.0  # umup only: attention's against the MLP's
  c.parameterization.act_mult = 1.0   # umup only: act(a x) / rms (alpha_ffn-act); attn_mult
                                      #   is its alpha_attn, output_mult its alpha_loss

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"          # sgd | adam | adamw | adam_atan2 | lion | muon |
                                      #   muon_spectral (Muon on hidden matrices)
  c.optimizer.lr = 2.0 ** -7          # global (base-shape) peak learning rate
  c.optimizer.weight_decay = 0.0
  c.optimizer.weight_decay_mode = "coupled"  # coupled: p -= lr*wd*p (AdamW);
                                             # independent: p -= schedule*wd*p
                                             # l2: g += wd*p (torch SGD/Adam, MuSGD)
  c.optimizer.b1 = 0.9                # Adam beta1 (SGD: momentum)
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-8
  c.optimizer.nesterov = False        # SGD only
  c.optimizer.grad_clip = 0.0         # global-norm clipping; 0 disables
  c.optimizer.schedule = "constant"   # constant | cosine | wsd | linear
  c.optimizer.warmup_steps = 0        # linear warmup (all schedules)
  c.optimizer.decay_fraction = 0.2    # wsd: final fraction of steps that decays
  c.optimizer.final_lr_ratio = 0.0    # cosine/wsd/linear end at lr * this
  c.optimizer.muon_beta = 0.95        # muon / muon_spectral: momentum of the matrices
  c.optimizer.ns_steps = 5            #   and their Newton-Schulz steps

  c.train = ml_collections.ConfigDict()
  c.train.steps = 600
  c.train.batch_size = 16
  c.train.eval_every = 200            # held-out eval period (and at the end)
  c.train.eval_batches = 8
  c.train.checkpoint_every = 200
  c.train.log_every = 50              # metrics rows in metrics.jsonl
  c.train.log_leaf_rms = True         # per-leaf rms of params, grads, updates
  c.train.divergence_mult = 3.0       # sweeps: loss above this x its first loss
                                      #   (or non-finite) freezes the trial

  c.data = ml_collections.ConfigDict()
  c.data.name = "stdlib"              # stdlib | tokens | synthetic
  c.data.seq_len = 128
  c.data.seed = 0                     # batch t is a pure function of (seed, t)
  c.data.train_path = ""              # tokens: nanoGPT-style flat .bin files
  c.data.val_path = ""
  c.data.token_dtype = "uint16"       # tokens: uint16 | uint32
  c.data.vocab_size = 0               # tokens/synthetic (stdlib: 256 bytes)
  c.data.synthetic_seed = 0           # synthetic: seed of the Markov chain

  c.mesh = ml_collections.ConfigDict()     # one run over devices (hptransfer.train;
                                      #   hptransfer/sharding.py, docs/training.md)
  c.mesh.data = 0                     # data parallel; 0: the devices the others leave
  c.mesh.fsdp = 1                     # params + optimizer state sharded (and batch)
  c.mesh.tensor = 1                   # Megatron tensor parallel (attention, MLP)
  c.mesh.tensor_rules = ()            # ((regex, dim), ...): a model of your own

  c.wandb = ml_collections.ConfigDict()
  c.wandb.mode = "disabled"           # disabled | offline | online
  c.wandb.project = "hptransfer"
  c.wandb.group = ""

  c.search = ml_collections.ConfigDict()   # a sweep file with get_search_space()
  c.search.sampler = "tpe"            # random | qmc | tpe | cmaes | gp (Optuna's)
  c.search.num_trials = 0             # trials in the study (a search sets it > 0)
  c.search.batch_size = 0             # trials per round (one vmapped group);
                                      #   0: what the memory estimate allows
  c.search.metric = "final_eval_loss"  # row column minimised
  c.search.seed = 0                   # the sampler's seed
  c.search.storage = ""               # "": SQLite in the workdir | RDB URL | journal:<path>
  c.search.study_name = ""            # "": the sweep file's name
  c.search.pruner = "none"            # none | median | successive_halving | hyperband
  c.search.startup_trials = 0         # random trials before TPE/CMA-ES model (0: theirs)

  c.mlflow = ml_collections.ConfigDict()
  c.mlflow.tracking_uri = ""          # "" off | "workdir" (<workdir>/mlruns) | any URI
  c.mlflow.experiment = ""            # "" : the sweep's name (runs: "hptransfer")
  return c
