"""The paper's published Keras 2.1.5 networks as exact PyTorch inference twins.

Modules: ``_hdf5`` (reading the files), ``_architecture`` (layer specs), ``_layers`` (the layers
in PyTorch), ``_weights`` (weights onto layers), ``_networks`` (networks and loaders),
``_published`` (the paper's files and both networks of a channel).

Agar et al. (Nat. Commun. 2019) published their trained autoencoders as Keras HDF5 files:

* ``<channel>_autoencoder_start_seed_042.h5``: a full model save whose ``model_config`` attribute
  holds the architecture (its weights are the untrained initial ones);
* ``<channel>_autoencoder_weights.<epoch>.hdf5``: the trained weights of the full autoencoder;
* ``<channel>_decoder_weights.<epoch>.hdf5``: the refined decoder (BatchNormalization(16),
  RepeatVector(96), 4 x Bidirectional LSTM(64), TimeDistributed Dense(1)), retrained without
  dropout on fixed embeddings. Its file holds no architecture; it is inferred from the weights.

The arrays are read with h5py only (no TensorFlow, no pickle) and mapped by layer name from the
``layer_names`` / ``weight_names`` attributes. Inference reproduces Keras exactly: LSTM gate order
``[i, f, c, o]``, ``hard_sigmoid`` recurrent activation, ``Bidirectional`` concatenation of the
forward and (re-reversed) backward outputs, BatchNormalization with its stored moving statistics
and the epsilon of the saved config (1e-3), no dropout.

Speed: the hard_sigmoid recurrence is a Python loop over the 96 steps, run for all pixels of a
batch and both directions at once (``batch_size`` pixels per pass, 256 by default), with pixels on
the last axis so that each step is one batched product and a few in-place operations on
contiguous gate blocks. On a CPU each batch is split into one part per torch thread, each run in
its own Python thread with one intra-op thread (intra-op threads meeting at a barrier after every
small step are slow on a busy shared CPU). All 3600 loops of the paper's scan pass in about 9 CPU
seconds per network.

Examples
--------
>>> net = load_pretrained("resonance")                       # doctest: +SKIP
>>> Z = net.transform(X)           # (n_pixels, 16) embeddings   # doctest: +SKIP
>>> X_hat = net.reconstruct(X)     # through the refined decoder  # doctest: +SKIP
"""

from ._architecture import parse_keras_architecture
from ._hdf5 import PRETRAINED_ENV
from ._networks import KerasAutoencoder, KerasDecoder, KerasNetwork, load_keras, load_keras_decoder
from ._published import PretrainedNetwork, load_pretrained, pretrained_directory

__all__ = [
    "PRETRAINED_ENV",
    "KerasAutoencoder",
    "KerasDecoder",
    "KerasNetwork",
    "PretrainedNetwork",
    "load_keras",
    "load_keras_decoder",
    "load_pretrained",
    "parse_keras_architecture",
    "pretrained_directory",
]
