"""`msr probe`: what a projector's M tokens keep of the image, measured without an LLM.

A projector and a small question-conditioned readout are trained from scratch on cached features
of probe scenes; held-out accuracy per question type says what the tokens carry. Run beside the
end-to-end evaluation, it separates "the tokens lack it" from "the LLM cannot read it"."""
