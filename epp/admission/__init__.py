"""Admission: whether a request may be scheduled now, and which endpoints it is offered.

`controller.AdmissionController.admit` is the one entry point; `shedding` refuses sheddable
requests under saturation, `flow_control` is the waiting room, `rooms` the room rules and
`envelope` the geometry that keeps a wake-up cheap.
"""
