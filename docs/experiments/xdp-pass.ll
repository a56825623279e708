target triple = "bpf"
; A pass-through XDP program (XDP_PASS = 2) for docs/experiments/xdp-on-host-veth.sh.
@_license = dso_local global [4 x i8] c"GPL\00", section "license", align 1
define dso_local i32 @xdp_pass(i8* %ctx) #0 section "xdp" {
  ret i32 2
}
attributes #0 = { nounwind }
