"""FaceStream gallery: identities, embeddings and FAISS search (see the gallery issue).

Nothing is implemented here yet; the package exists so that the fixed layout is in place.
"""
