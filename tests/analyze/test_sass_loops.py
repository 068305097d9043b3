"""The SASS loop parser on hand-written listings (cuobjdump's format, 16 bytes an instruction)."""

from __future__ import annotations

from millkernels.analyze.sass_loops import (
    find_loops,
    hot_loop,
    parse_functions,
    parse_instructions,
    sass_metrics,
)


def _sass(*lines: str) -> str:
    """A listing of ``lines`` (``"[@P0 ]OPCODE operands"``) at addresses 0x0, 0x10, ..."""
    out = []
    for n, line in enumerate(lines):
        out.append(f"        /*{n * 16:04x}*/                   {line} ;   /* 0x000000 */")
        out.append("                                                   /* 0x000fe2 */")
    return "\n".join(out)


def _at(n: int) -> str:
    return hex(n * 16)


def test_instructions_predicates_and_never_executed():
    ins = parse_instructions(_sass("@!PT LDS RZ, [RZ]", "NOP", "@P0 BRA 0x0", "IADD3 R1, R1, 0x1"))
    assert [i.opcode for i in ins] == ["LDS", "NOP", "BRA", "IADD3"]
    assert [i.never for i in ins] == [True, True, False, False]
    assert ins[2].pred == "@P0" and ins[2].target == 0


def test_nested_loops_hot_loop_is_the_inner_one_with_mma():
    text = _sass(
        "MOV R0, RZ",  # 0
        "LDG.E R2, desc[UR4][R4.64]",  # 1: outer loop starts
        "HMMA.16816.F32 R8, R12, R14, R8",  # 2: inner loop starts
        "LDS R3, [R5]",  # 3
        "HMMA.16816.F32 R8, R12, R14, R8",  # 4
        "BAR.SYNC.DEFER_BLOCKING 0x0",  # 5
        f"@P1 BRA {_at(2)}",  # 6: inner back edge
        "MUFU.EX2 R1, R1",  # 7
        "HMMA.16816.F32 R8, R12, R14, R8",  # 8
        f"@P2 BRA {_at(1)}",  # 9: outer back edge
        "EXIT",  # 10
        f"BRA {_at(11)}",  # 11: trap loop, not a loop
    )
    ins = parse_instructions(text)
    loops = find_loops(ins)
    assert [(lp.start, lp.end) for lp in loops] == [(16, 9 * 16), (32, 6 * 16)]
    hot = hot_loop(loops)
    assert hot is not None and (hot.start, hot.end) == (32, 96)
    m = sass_metrics(ins)
    assert m["loops"] == 2
    assert m["loop.instructions"] == 5 and m["loop.mma"] == 2
    assert m["loop.mma_ratio"] == 2 / 3
    assert m["loop.barriers"] == 1 and m["loop.shared_loads"] == 1
    assert m["loop.global_loads"] == 0 and m["loop.mufu"] == 0
    assert m["loop.op.HMMA"] == 2 and m["loop.op.BRA"] == 1
    assert m["kernel.op.HMMA"] == 3 and m["kernel.op.MUFU"] == 1
    assert m["loop.wgmma_min_n"] == 0  # mma.sync only


def test_without_mma_the_innermost_loop_with_most_instructions():
    text = _sass(
        "LDG.E R2, desc[UR4][R4.64]",  # 0: loop A (5 instructions)
        "I2F R2, R2",
        "I2F R2, R2",
        "I2F R2, R2",
        f"@P0 BRA {_at(0)}",
        "LDG.E R2, desc[UR4][R4.64]",  # 5: loop B (outer, holds C)
        "FADD R2, R2, R3",  # 6: loop C (6 instructions)
        "FADD R2, R2, R3",
        "FADD R2, R2, R3",
        "FADD R2, R2, R3",
        "FADD R2, R2, R3",
        f"@P0 BRA {_at(6)}",
        f"@P1 BRA {_at(5)}",
        "EXIT",
    )
    m = sass_metrics(parse_instructions(text))
    assert m["loops"] == 3
    assert m["loop.instructions"] == 6 and m["loop.op.FADD"] == 5 and m["loop.mma"] == 0
    assert m["loop.i2f"] == 0  # the I2F is in the smaller loop A


def test_named_barriers_are_not_cta_barriers():
    text = _sass(
        "BAR.SYNC.DEFER_BLOCKING 0x0",  # 0: counted
        "BAR.SYNC R1, 0x80",
        "BAR.SYNC.DEFER_BLOCKING 0x1, 0x100",
        "BAR.SYNC 0x0, 0x80",
        "BAR.ARV 0x0, 0x80",
        "BAR.SYNC 0x0",  # counted
        f"@P0 BRA {_at(0)}",
    )
    assert sass_metrics(parse_instructions(text))["loop.barriers"] == 2


def test_warp_specialized_retry_stubs_do_not_make_loops():
    """A consumer loop whose barrier waits branch to retry stubs after EXIT, which jump back
    into the loop; and a register-reallocation spin loop before it."""
    text = _sass(
        "USETMAXREG.TRY_ALLOC.CTAPOOL UP0, 0xe8",  # 0: spin loop
        "PLOP3.LUT P1, PT, PT, PT, UP0, 0x80, 0x0",
        f"@!P1 BRA {_at(0)}",
        "SYNCS.PHASECHK.TRANS64.TRYWAIT P2, [UR11+0x28040], R2",  # 3: the loop
        f"@!P2 BRA {_at(12)}",  # 4: to stub 1
        "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR12].tnspB, R24",  # 5
        "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR12].tnspB, R24, gsb0",
        "WARPGROUP.DEPBAR.LE gsb0, 0x0",
        "BAR.SYNC.DEFER_BLOCKING 0x2, 0x80",
        f"@!P3 BRA {_at(3)}",  # 9: the loop's back edge
        "EXIT",  # 10
        f"BRA {_at(11)}",  # 11: trap
        "SYNCS.PHASECHK.TRANS64.TRYWAIT P2, [UR11+0x28040], R2",  # 12: stub 1
        f"@!P2 BRA {_at(12)}",  # spin
        f"BRA {_at(5)}",  # 14: back into the loop, after the wait
    )
    ins = parse_instructions(text)
    loops = find_loops(ins)
    assert [(lp.start // 16, lp.end // 16, lp.spin) for lp in loops] == [
        (0, 2, True),
        (3, 9, False),
        (12, 13, True),
    ]
    m = sass_metrics(ins)
    assert m["loops"] == 1
    assert m["loop.instructions"] == 7 and m["loop.mma"] == 2 and m["loop.barriers"] == 0
    assert m["kernel.op.HGMMA"] == 2
    assert m["loop.wgmma_min_n"] == 64  # the thinner of 64x64 and 64x128


def test_kernel_without_loops_has_no_loop_metrics():
    m = sass_metrics(parse_instructions(_sass("UTMALDG.2D [UR8], [UR4]", "EXIT")))
    assert m["loops"] == 0 and m["tma"] == 1
    assert not any(k.startswith("loop.") for k in m)


def test_functions_are_split_by_header():
    text = "\tFunction : a\n" + _sass("EXIT") + "\n\tFunction : b\n" + _sass("NOP", "EXIT")
    funcs = parse_functions(text)
    assert {k: len(v) for k, v in funcs.items()} == {"a": 1, "b": 2}


def test_loop_fields_are_the_metrics_expect_knows():
    from millkernels.analyze.expect import LOOP_FIELDS, known_metric
    from millkernels.analyze.sass_loops import loop_fields

    fields = loop_fields(parse_instructions(_sass("HMMA.16816.F32 R8, R12, R14, R8", "EXIT")))
    assert {k for k in fields if not k.startswith("op.")} == set(LOOP_FIELDS)
    assert all(known_metric(f"loop.{k}") for k in fields)
