"""DICOM objects: reading an image instance (pixels, modality, spacing), keeping patient data out, and
building the objects busi-web writes back (Secondary Capture, Structured Report, Encapsulated PDF).

Built on pydicom (with the pylibjpeg, pyjpegls and Pillow decoders), highdicom and dicognito. Nothing here
talks to a network or knows the web app: :mod:`busi_web.pacs` moves these objects, the web layer uses them.
"""
