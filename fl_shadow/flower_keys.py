"""Keys of the values exchanged through Flower (fit config and fit metrics), in one place."""

# Server -> client (fit config)
SERVER_ROUND = "server-round"
NUM_ROUNDS = "num-rounds"
EXPERIMENT = "experiment"  # the resolved experiment config as YAML text

# Client -> server (fit metrics)
PARTITION_ID = "partition-id"
TRAIN_LOSS = "train-loss"
NUM_STEPS = "num-steps"
FIT_SECONDS = "fit-seconds"
AUDIT = "audit"  # simulation only: JSON list of per-step global image indices

# Node config (Flower)
NODE_PARTITION_ID = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"
NODE_DATA_PATH = "data-path"
NODE_CLIENT_ID = "client-id"  # deployment: the hospital's number, 0..num_clients-1

# Run config (pyproject [tool.flwr.app.config])
RUN_CONFIG_PATH = "config"
RUN_OVERRIDES = "overrides"
RUN_DIR = "run-dir"
RUN_RESUME = "resume"  # continue run-dir from its checkpoint
RUN_PROJECT_DIR = "project-dir"  # the operator's folder relative paths resolve against
