// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {AttestationLedger} from "../src/AttestationLedger.sol";
import {TestBase} from "./utils/TestBase.sol";

/// @notice Fuzz tests of the ledger's access control and write-once roots.
contract AttestationLedgerTest is TestBase {
    address internal constant ADMIN = address(0xAD);
    address internal constant COORDINATOR = address(0xC0);
    AttestationLedger internal ledger;

    function setUp() public {
        ledger = new AttestationLedger(ADMIN, COORDINATOR);
    }

    function testFuzz_RootIsWriteOnce(bytes32 runId, uint64 round, bytes32 root, bytes32 other, bytes32 agg)
        public
    {
        vm.assume(root != bytes32(0) && other != bytes32(0));
        assertEq(ledger.rootOf(runId, round), bytes32(0), "unposted round has a root");
        vm.prank(COORDINATOR);
        ledger.postRound(runId, round, root, agg);
        assertEq(ledger.rootOf(runId, round), root, "root not stored");
        vm.prank(COORDINATOR);
        vm.expectRevert(abi.encodeWithSelector(AttestationLedger.RoundAlreadyPosted.selector, runId, round));
        ledger.postRound(runId, round, other, agg);
        assertEq(ledger.rootOf(runId, round), root, "root overwritten");
    }

    function testFuzz_RoundsAreIndependent(bytes32 runId, uint64 a, uint64 b, bytes32 rootA, bytes32 rootB)
        public
    {
        vm.assume(a != b && rootA != bytes32(0) && rootB != bytes32(0));
        vm.prank(COORDINATOR);
        ledger.postRound(runId, a, rootA, bytes32(0));
        assertEq(ledger.rootOf(runId, b), bytes32(0), "posting one round set another");
        vm.prank(COORDINATOR);
        ledger.postRound(runId, b, rootB, bytes32(0));
        assertEq(ledger.rootOf(runId, a), rootA, "posting one round changed another");
    }

    function testFuzz_OnlyCoordinatorPosts(address caller, bytes32 runId, uint64 round, bytes32 root) public {
        vm.assume(caller != COORDINATOR && root != bytes32(0));
        bytes32 role = ledger.COORDINATOR_ROLE();
        vm.prank(caller);
        vm.expectRevert(abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, caller, role));
        ledger.postRound(runId, round, root, bytes32(0));
        assertEq(ledger.rootOf(runId, round), bytes32(0), "unauthorised post stored a root");
    }

    function testFuzz_ZeroRootRefused(bytes32 runId, uint64 round, bytes32 agg) public {
        vm.prank(COORDINATOR);
        vm.expectRevert(AttestationLedger.EmptyRoot.selector);
        ledger.postRound(runId, round, bytes32(0), agg);
    }

    function testFuzz_AdminGrantsCoordinator(address newCoordinator, bytes32 runId, uint64 round, bytes32 root)
        public
    {
        vm.assume(root != bytes32(0));
        bytes32 role = ledger.COORDINATOR_ROLE();
        vm.prank(ADMIN);
        ledger.grantRole(role, newCoordinator);
        vm.prank(newCoordinator);
        ledger.postRound(runId, round, root, bytes32(0));
        assertEq(ledger.rootOf(runId, round), root, "granted coordinator could not post");
    }
}
