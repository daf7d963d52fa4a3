"""Sample-quality metrics: FID, Inception Score and KID (`metrics`) on features of the FID
Inception network (`inception`, weights read from pytorch-fid's release by `torch_checkpoint`),
computed over all local devices (`features`)."""
