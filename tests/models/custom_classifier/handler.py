"""A custom handler subclassing the built-in ImageClassifier, as TorchServe's examples do
(DenseNet, MNIST): its own image pipeline and top-k, the base class's loading and batching."""
from ts.handler_utils.image_transforms import CenterCrop, Compose, Normalize, Resize, ToRGB, \
    ToTensor
from ts.torch_handler.image_classifier import ImageClassifier


class CustomClassifier(ImageClassifier):
    image_processing = Compose([ToRGB(), Resize(40), CenterCrop(32), ToTensor(),
                                Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])])

    def initialize(self, context):
        super().initialize(context)
        self.set_max_result_classes(3)

    def postprocess(self, data):
        return [{"handler": "custom", "top": row, "input_shape": list(self.last_shape)}
                for row in super().postprocess(data)]

    def preprocess(self, data):
        images = super().preprocess(data)
        self.last_shape = images.shape[1:]
        return images
