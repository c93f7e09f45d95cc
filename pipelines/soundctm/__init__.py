"""SoundCTM for diffusers: a CTM student (1-step drafts, N-step deterministic refinement) of a latent-diffusion
text-to-sound teacher, as a diffusers pipeline."""

from .autoencoder_gaussian_dac import AutoencoderGaussianDAC
from .autoencoder_log_mel import AutoencoderLogMel
from .autoencoder_mel_vocoder import AutoencoderMelVocoder
from .autoencoder_oobleck_soundctm import AutoencoderOobleckSoundCTM
from .pipeline import SoundCTMPipeline
from .pipeline_stable_audio_soundctm import SoundCTMStableAudioPipeline
from .scheduling_ctm import CTMScheduler
from .scheduling_edm_heun import EDMHeunScheduler
from .stable_audio_soundctm import SoundCTMStableAudioDiTModel
from .transformer_soundctm_dit import SoundCTMDiTModel
from .unet_soundctm import SoundCTMUNet2DConditionModel

__all__ = ["AutoencoderGaussianDAC", "AutoencoderLogMel", "AutoencoderMelVocoder", "AutoencoderOobleckSoundCTM", "CTMScheduler", "EDMHeunScheduler", "SoundCTMDiTModel", "SoundCTMPipeline", "SoundCTMStableAudioPipeline", "SoundCTMStableAudioDiTModel", "SoundCTMUNet2DConditionModel"]
__version__ = "0.1.0"
