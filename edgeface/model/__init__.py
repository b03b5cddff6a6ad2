"""Training and evaluation of the model (the network itself is ``edgeface.engines.torch.network``).

    data.py      readers for labelled face sets (labels.csv, AFLW2000-3D, image folders) -> Sample
    blur.py      synthetic blur and the blur score's definition (numpy / OpenCV)
    pose.py      head-pose rotation algebra (numpy)
    evaluate.py  accuracy on labelled sets through any runner (torch, or any engine via the Predictor)
    train.py     FP32 training from a recipe (torch)

Only train.py needs torch (imported inside it): data, blur, pose and evaluate run on a torch-free device,
which is where `edgeface bench --data` measures accuracy.
"""
