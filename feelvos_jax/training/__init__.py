"""Training: the SPMD loop (`train`), losses, optimizers, the device mesh and shardings
(`sharding`), Orbax checkpoints and variable restore (`checkpointing`), and the import of
pretrained weights (`weights`). `train` imports TensorFlow only inside the loop (input pipeline)."""
