"""Training: the SPMD loop (`train`), losses, optimizers, the device mesh and shardings
(`sharding`), Orbax checkpoints and variable restore (`checkpointing`), the checksums of
checkpoint and export files (`integrity`), the one-run-per-workdir lock (`workdir_lock`), and the
import of pretrained weights (`weights`). `train` imports TensorFlow only inside the loop (input
pipeline)."""
