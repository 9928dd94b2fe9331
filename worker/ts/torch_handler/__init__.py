"""Handlers: ``BaseHandler`` (base_handler) and TorchServe's built-in handlers, which
``--handler <name>`` names when an archive has no module of its own by that name:
image_classifier, image_segmenter, object_detector, text_classifier (and the vision_handler and
text_handler bases). request_envelope/ holds the ``service_envelope`` wrappers."""
