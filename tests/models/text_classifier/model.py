"""An EmbeddingBag text classifier (TorchServe's text_classification example's shape):
forward(token_ids, offsets) -> one row of 4 logits per bag."""
from torch import nn

VOCAB_SIZE = 16


class TextSentiment(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.EmbeddingBag(VOCAB_SIZE, 8, mode="mean")
        self.fc = nn.Linear(8, 4)

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))
