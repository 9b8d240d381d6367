"""Published weight files: readers (torch .pth, safetensors), where the files
live, and their conversion to the params of the pretrained metric networks
(VGG, LPIPS, FID Inception). Below the models: nothing here imports losses,
training or the tokenizer converters (vqlab.convert)."""
