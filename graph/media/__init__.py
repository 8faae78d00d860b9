"""Drawing and looking: image-generation requests, media checks (sizes, pixels, frames), safe fetching of
the images and videos people post, and the GPU-tenant rule that frees the GTX 1660 for voice sessions."""
