"""Training the model (the network itself is ``edgeface.engines.torch.network``; labelled data, blur and pose
definitions and evaluation are ``edgeface.faces``).

    train.py        FP32 training from a recipe (torch, imported inside it)
    profiling.py    re-rendering a face at a new head rotation from its mesh (numpy / OpenCV / SciPy)
    render_bank.py  the cached bank of re-rendered faces for training, and the rendered wide-pose val set
"""
